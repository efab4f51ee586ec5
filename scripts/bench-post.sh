# Sourced by the proxy benchmarks: the request they all send, a 1 KiB chat-completion POST (JSON,
# one user message of `y`s), written as wrk's Lua script.
#   write_post_lua FILE   # FILE: the script for `wrk -s`; also sets $post_body to the body
write_post_lua() {
  post_body=$(python3 -c 'h="{\"model\":\"m\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\""; t="\"}]}"; print(h+"y"*(1024-len(h)-len(t))+t)')
  cat >"$1" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$post_body'
LUA
}
