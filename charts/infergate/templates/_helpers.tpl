{{/* Names ------------------------------------------------------------------------------------- */}}

{{- define "infergate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "infergate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<component>", e.g. infergate-gateway. Call with (list $ "gateway"). */}}
{{- define "infergate.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "infergate.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "infergate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: call with (list $ "component"). */}}
{{- define "infergate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "infergate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "infergate.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "infergate.chart" $root }}
{{ include "infergate.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: infergate
{{- end }}

{{- define "infergate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Monitoring ---------------------------------------------------------------------------------- */}}

{{/* "true" when ServiceMonitors are rendered: forced, or detected from the cluster's API versions. */}}
{{- define "infergate.serviceMonitor" -}}
{{- if or .Values.serviceMonitor.enabled (and .Values.serviceMonitor.autoDetect (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
true
{{- end }}
{{- end }}

{{/* Prometheus scrape annotations for a pod whose /metrics is on `port`; (list $ port). */}}
{{- define "infergate.scrapeAnnotations" -}}
{{- $root := index . 0 }}
{{- if and $root.Values.scrapeAnnotations.enabled (not (include "infergate.serviceMonitor" $root)) }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ index . 1 | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The configuration file -------------------------------------------------------------------- */}}

{{/* The simulator's pool entry, in the config file's own keys. */}}
{{- define "infergate.simulatorPool" -}}
{{- $sim := .Values.simulator }}
name: {{ $sim.poolName }}
models: [{{ $sim.model | quote }}]
flavor: {{ $sim.flavor }}
discovery:
  kubernetes:
    service: {{ include "infergate.componentName" (list . "sim") }}
    port: http
{{- if and .Values.autoscaler.enabled $sim.autoscaling.enabled }}
autoscaling:
  target:
    kind: Deployment
    name: {{ include "infergate.componentName" (list . "sim") }}
  min_replicas: {{ $sim.autoscaling.minReplicas }}
  max_replicas: {{ $sim.autoscaling.maxReplicas }}
{{- end }}
{{- end }}

{{/* Every pool: the simulator's (if on), then values.pools. Renders a YAML list. */}}
{{- define "infergate.pools" -}}
{{- $pools := list }}
{{- if .Values.simulator.enabled }}
{{- $pools = append $pools (include "infergate.simulatorPool" . | fromYaml) }}
{{- end }}
{{- range .Values.pools }}
{{- $pools = append $pools . }}
{{- end }}
{{- toYaml (dict "pools" $pools) }}
{{- end }}

{{/* The whole file mounted at /etc/infergate/config.yaml, read by gateway and autoscaler. */}}
{{- define "infergate.config" -}}
{{- $gateway := deepCopy (default dict .Values.gateway.config) }}
{{- $_ := set $gateway "listen" (printf "0.0.0.0:%v" .Values.gateway.ports.http) }}
{{- $_ := set $gateway "admin_listen" (printf "0.0.0.0:%v" .Values.gateway.ports.admin) }}
{{- $autoscaler := deepCopy (default dict .Values.autoscaler.config) }}
{{- $_ := set $autoscaler "admin_listen" (printf "0.0.0.0:%v" .Values.autoscaler.ports.admin) }}
{{- $le := default dict (get $autoscaler "leader_election") }}
{{- $_ := set $le "enabled" true }}
{{- if not (hasKey $le "lease_name") }}
{{- $_ := set $le "lease_name" (include "infergate.componentName" (list . "autoscaler")) }}
{{- end }}
{{- $_ := set $autoscaler "leader_election" $le }}
{{- $signals := default dict (get $autoscaler "signals") }}
{{- if not (hasKey $signals "gateways") }}
{{- $_ := set $signals "gateways" (list (printf "http://%s.%s.svc:%v/metrics" (include "infergate.componentName" (list . "gateway-admin")) .Release.Namespace .Values.gateway.ports.admin)) }}
{{- end }}
{{- $_ := set $autoscaler "signals" $signals }}
{{- $pools := (include "infergate.pools" . | fromYaml).pools }}
{{- toYaml (dict "gateway" $gateway "autoscaler" $autoscaler "pools" $pools) }}
{{- end }}

{{/* The model `helm test` sends: test.model, the simulator's, or the first pool's first. */}}
{{- define "infergate.testModel" -}}
{{- if .Values.test.model }}
{{- .Values.test.model }}
{{- else if .Values.simulator.enabled }}
{{- .Values.simulator.model }}
{{- else if .Values.pools }}
{{- first (first .Values.pools).models }}
{{- end }}
{{- end }}

{{/* A soft anti-affinity over nodes for one component, unless the user gave an affinity. */}}
{{- define "infergate.affinity" -}}
{{- $root := index . 0 }}
{{- $given := index . 1 }}
{{- if $given }}
{{- toYaml $given }}
{{- else }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "infergate.selectorLabels" (list $root (index . 2)) | nindent 12 }}
{{- end }}
{{- end }}

{{/* Adds verbs to grants[component][namespace]["group|resource"] (dicts are shared, so this
     mutates the caller's). Call with (list $grants component namespace group resource verbs). */}}
{{- define "infergate.grant" -}}
{{- $grants := index . 0 }}
{{- $byNs := get $grants (index . 1) }}
{{- $ns := index . 2 }}
{{- if not (hasKey $byNs $ns) }}{{ $_ := set $byNs $ns dict }}{{ end }}
{{- $rules := get $byNs $ns }}
{{- $key := printf "%s|%s" (index . 3) (index . 4) }}
{{- $_ := set $rules $key (concat (default list (get $rules $key)) (index . 5)) }}
{{- end }}
