{{/* Names ------------------------------------------------------------------ */}}

{{- define "hookwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hookwarden.fullname" -}}
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

{{/* Object names get a component suffix; keep room for it within 63 characters. */}}
{{- define "hookwarden.controller.fullname" -}}
{{- printf "%s-controller" (include "hookwarden.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{- define "hookwarden.receiver.fullname" -}}
{{- printf "%s-receiver" (include "hookwarden.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "hookwarden.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "hookwarden.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- required "controller.serviceAccount.name is required when controller.serviceAccount.create is false" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hookwarden.receiver.serviceAccountName" -}}
{{- if .Values.receiver.serviceAccount.create }}
{{- default (include "hookwarden.receiver.fullname" .) .Values.receiver.serviceAccount.name }}
{{- else }}
{{- required "receiver.serviceAccount.name is required when receiver.serviceAccount.create is false" .Values.receiver.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels ----------------------------------------------------------------- */}}

{{- define "hookwarden.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hookwarden.labels" -}}
helm.sh/chart: {{ include "hookwarden.chart" . }}
{{ include "hookwarden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hookwarden
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "hookwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Call with (dict "root" $ "component" "controller"). */}}
{{- define "hookwarden.componentLabels" -}}
{{ include "hookwarden.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "hookwarden.componentSelectorLabels" -}}
{{ include "hookwarden.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Image ------------------------------------------------------------------ */}}

{{- define "hookwarden.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Public endpoint ---------------------------------------------------------
The base URL senders use. An explicit externalBaseURL wins; otherwise it follows
from how the receiver is exposed. Empty when nothing exposes it. */}}
{{- define "hookwarden.externalBaseURL" -}}
{{- if .Values.externalBaseURL }}
{{- trimSuffix "/" .Values.externalBaseURL }}
{{- else if .Values.receiver.ingress.enabled }}
{{- printf "%s://%s" (ternary "https" "http" .Values.receiver.ingress.tls.enabled) .Values.receiver.ingress.host }}
{{- else if and .Values.receiver.httpRoute.enabled .Values.receiver.httpRoute.hostnames }}
{{- printf "%s://%s" .Values.receiver.httpRoute.scheme (first .Values.receiver.httpRoute.hostnames) }}
{{- end }}
{{- end }}

{{- define "hookwarden.bindAddr" -}}
{{- $host := .root.Values.bindAddress }}
{{- if contains ":" $host }}
{{- printf "[%s]:%v" $host .port }}
{{- else }}
{{- printf "%s:%v" $host .port }}
{{- end }}
{{- end }}

{{/* Command lines -------------------------------------------------------------
The only place flags are spelled: values -> args. */}}

{{- define "hookwarden.controller.args" -}}
- controller
- --namespace=$(POD_NAMESPACE)
- --metrics-addr={{ include "hookwarden.bindAddr" (dict "root" . "port" .Values.controller.metricsPort) }}
- --log-format={{ .Values.logFormat }}
{{- with include "hookwarden.externalBaseURL" . }}
- --external-base-url={{ . }}
{{- end }}
{{- range .Values.controller.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Seconds a stopping receiver spends writing the status of what it journaled: what the
grace period leaves after the preStop pause, the binary's 5 s shutdown delay and 5 s for
closing the journal and exiting. Under 10 s is refused: a drain that cannot apply the
journal loses it with an emptyDir volume.
*/}}
{{- define "hookwarden.receiver.flushSeconds" -}}
{{- $flush := sub (sub (int .Values.receiver.terminationGracePeriodSeconds) (int .Values.receiver.preStopSleepSeconds)) 10 -}}
{{- if lt $flush 10 -}}
{{- fail (printf "receiver.terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds (%d) + 20: 5 s of shutdown delay, 10 s or more for the final status flush and 5 s to close the journal" (int .Values.receiver.terminationGracePeriodSeconds) (int .Values.receiver.preStopSleepSeconds)) -}}
{{- end -}}
{{- $flush -}}
{{- end -}}

{{- define "hookwarden.receiver.args" -}}
- receiver
- --namespace=$(POD_NAMESPACE)
- --listen={{ include "hookwarden.bindAddr" (dict "root" . "port" .Values.receiver.port) }}
- --metrics-addr={{ include "hookwarden.bindAddr" (dict "root" . "port" .Values.receiver.metricsPort) }}
- --journal-dir={{ .Values.receiver.journal.mountPath }}
{{- with include "hookwarden.receiver.journalMaxBytes" . }}
- --journal-max-bytes={{ . }}
{{- end }}
- --journal-commit-window={{ .Values.receiver.journal.commitWindow }}
- --status-interval={{ .Values.receiver.statusInterval }}
- --status-writes-per-second={{ .Values.receiver.statusWritesPerSecond }}
- --dedup-max-ids={{ .Values.receiver.dedupMaxIds | int64 }}
- --max-body-bytes-in-flight={{ .Values.receiver.maxBodyBytesInFlight | int64 }}
- --max-connections={{ .Values.receiver.maxConnections | int64 }}
- --shutdown-flush-timeout={{ include "hookwarden.receiver.flushSeconds" . }}s
- --log-format={{ .Values.logFormat }}
{{- with include "hookwarden.externalBaseURL" . }}
- --external-base-url={{ . }}
{{- end }}
{{- with .Values.receiver.trustedProxies }}
- --trusted-proxies={{ join "," . }}
{{- end }}
{{- with .Values.receiver.forward.denyCIDRs }}
- --forward-deny-cidrs={{ join "," . }}
{{- end }}
{{- with .Values.receiver.forward.allowCIDRs }}
- --forward-allow-cidrs={{ join "," . }}
{{- end }}
{{- with .Values.receiver.forward.maxLag }}
- --forward-max-lag={{ . }}
{{- end }}
{{- range .Values.receiver.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Environment shared by both components. */}}
{{- define "hookwarden.env" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/* Topology spread: the component's own list, else the chart default. */}}
{{- define "hookwarden.topologySpread" -}}
{{- $values := index .root.Values .component }}
{{- if $values.topologySpreadConstraints }}
{{- toYaml $values.topologySpreadConstraints }}
{{- else if .root.Values.defaultTopologySpread }}
{{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
- maxSkew: 1
  topologyKey: {{ . }}
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "hookwarden.componentSelectorLabels" $ | nindent 6 }}
  matchLabelKeys:
    - pod-template-hash
{{- end }}
{{- end }}
{{- end }}

{{/* PodDisruptionBudget spec. Call with (dict "root" $ "component" "receiver"). */}}
{{- define "hookwarden.pdbSpec" -}}
{{- $pdb := (index .root.Values .component).pdb }}
{{- if not (eq (toString $pdb.minAvailable) "") }}
minAvailable: {{ $pdb.minAvailable }}
{{- else }}
maxUnavailable: {{ $pdb.maxUnavailable }}
{{- end }}
selector:
  matchLabels:
    {{- include "hookwarden.componentSelectorLabels" . | nindent 4 }}
{{- end }}

{{/*
Bytes in a size given as a number, optionally with a binary or decimal suffix ("1Gi",
"1.5Gi", "500M", 1073741824). Input: dict "quantity" and "what" (the value's name, for the
error). Other forms (exponents, milli) are refused with a message rather than misread.
*/}}
{{- define "hookwarden.quantityBytes" -}}
{{- $q := .quantity -}}
{{- if or (kindIs "float64" $q) (kindIs "int" $q) (kindIs "int64" $q) -}}
{{- int64 $q -}}
{{- else -}}
{{- $s := toString $q -}}
{{- $number := regexFind "^[0-9]+([.][0-9]+)?" $s -}}
{{- $suffix := trimPrefix $number $s -}}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- if or (not $number) (not (hasKey $units $suffix)) -}}
{{- fail (printf "%s: %q is not a size this chart can read; write a number with an optional Ki, Mi, Gi, Ti, k, M, G or T suffix, or set receiver.journal.maxBytes explicitly" .what $s) -}}
{{- end -}}
{{- mulf (float64 $number) (get $units $suffix) | int64 -}}
{{- end -}}
{{- end -}}

{{/*
The receiver's journal cap in bytes: receiver.journal.maxBytes, else 75% of the journal
volume. Empty when neither is known (an emptyDir without sizeLimit): the binary's default.
*/}}
{{- define "hookwarden.receiver.journalMaxBytes" -}}
{{- $j := .Values.receiver.journal -}}
{{- $what := "receiver.journal.sizeLimit" -}}
{{- $size := $j.sizeLimit -}}
{{- if $j.persistence.enabled -}}
{{- $what = "receiver.journal.persistence.size" -}}
{{- $size = $j.persistence.size -}}
{{- end -}}
{{- $volume := 0 -}}
{{- if $size -}}
{{- $volume = include "hookwarden.quantityBytes" (dict "quantity" $size "what" $what) | int64 -}}
{{- end -}}
{{- if $j.maxBytes -}}
{{- $max := include "hookwarden.quantityBytes" (dict "quantity" $j.maxBytes "what" "receiver.journal.maxBytes") | int64 -}}
{{- if and (gt $volume 0) (gt $max (div (mul $volume 9) 10)) -}}
{{- fail (printf "receiver.journal.maxBytes (%d bytes) must stay within 90%% of %s (%d bytes): a checkpoint needs room for a second snapshot and the filesystem for itself, and a full emptyDir gets the pod evicted with its journal" $max $what $volume) -}}
{{- end -}}
{{- $max -}}
{{- else if gt $volume 0 -}}
{{- div (mul $volume 3) 4 -}}
{{- end -}}
{{- end -}}
