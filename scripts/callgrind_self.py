"""Own (self) instructions per request by function, from a callgrind output file.

Usage: callgrind_self.py FILE REQUESTS TOP NAME
Prints "NAME REQUESTS TOTAL_PER_REQUEST", then the TOP functions, one per line, as
"  <instructions per request>  <share>  <function>".

callgrind_annotate attributes everything to the threads' entry point when the counters were zeroed
mid-run, so the file is read here: a cost line belongs to the current `fn=`, except the line that
follows a `calls=` line, which is the inclusive cost of that call.
"""

import collections
import re
import sys


def main():
    path, requests, top, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    names = {}
    own = collections.Counter()
    current = None
    after_call = False

    def resolve(text):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", text)
        if not m:
            return text
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), m.group(1))

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                current = resolve(line[3:])
            elif line.startswith("cfn="):
                resolve(line[4:])
            elif line.startswith("calls="):
                after_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                fields = line.split()
                if after_call:
                    after_call = False
                elif len(fields) > 1:
                    own[current] += int(fields[1])
    total = sum(own.values())
    print(f"{name} {requests} {total // max(requests, 1)}")
    for function, cost in own.most_common(top):
        print(f"  {cost / requests:8.0f}  {100 * cost / total:5.1f}%  {function[:140]}")


if __name__ == "__main__":
    main()
