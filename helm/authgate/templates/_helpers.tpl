{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "authgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name + chart name, unless the release already contains it. */}}
{{- define "authgate.fullname" -}}
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

{{- define "authgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "authgate.labels" -}}
helm.sh/chart: {{ include "authgate.chart" . }}
{{ include "authgate.selectorLabels" . }}
app.kubernetes.io/version: {{ include "authgate.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: authgate
{{- end }}

{{/* Labels that select the pods (immutable in a Deployment: keep them few). */}}
{{- define "authgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "authgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "authgate.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag | toString | trunc 63 -}}
{{- end }}

{{/* The container image: [registry/]repository followed by @digest when a
digest is given, :tag otherwise. The registry is global.imageRegistry when
set, else image.registry; none when both are empty. */}}
{{- define "authgate.image" -}}
{{- $registry := .Values.image.registry | default "" }}
{{- with .Values.global }}
{{- with .imageRegistry }}
{{- $registry = . }}
{{- end }}
{{- end }}
{{- $repository := .Values.image.repository }}
{{- with $registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (include "authgate.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "authgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "authgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret passed to the pod with envFrom, or "" when there is none. */}}
{{- define "authgate.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if .Values.secrets }}
{{- include "authgate.fullname" . }}
{{- end }}
{{- end }}

{{/* Where the container's writable data volume is mounted (its working
directory, so a relative SQLite store path lands there). */}}
{{- define "authgate.dataDir" -}}/var/lib/authgate{{- end }}

{{/* The SQLite file of the elevation store when the config uses one ("" for
none, PostgreSQL, an in-memory database or a URL read from the environment).
An absolute path outside the data volume would be on the read-only root
filesystem: that is a chart error, reported at render time. */}}
{{- define "authgate.sqlitePath" -}}
{{- $elevation := dig "definition" "elevation" nil (.Values.config | default dict) }}
{{- if kindIs "map" $elevation }}
{{- $url := dig "store" "url" "sqlite://authgate.db" $elevation }}
{{- if and (kindIs "string" $url) (hasPrefix "sqlite:" $url) (not (contains ":memory:" $url)) }}
{{- $path := trimPrefix "sqlite:" (trimPrefix "sqlite://" $url) | splitList "?" | first }}
{{- $dataDir := include "authgate.dataDir" . }}
{{- if and (isAbs $path) (not (hasPrefix (printf "%s/" $dataDir) $path)) }}
{{- fail (printf "config.definition.elevation.store.url: the SQLite file %s must be under %s (the pod's writable data volume) or relative to it" $path $dataDir) }}
{{- end }}
{{- $path }}
{{- end }}
{{- end }}
{{- end }}

{{/* The number of pods a PodDisruptionBudget field stands for, given the
number of replicas: (list value replicas key). A percentage is rounded up, as
Kubernetes does. */}}
{{- define "authgate.pdbCount" -}}
{{- $value := index . 0 }}
{{- $replicas := index . 1 }}
{{- if kindIs "string" $value }}
{{- if not (regexMatch "^[0-9]+%$" $value) }}
{{- fail (printf "podDisruptionBudget.%s %q: use a number of pods or a percentage such as \"50%%\"" (index . 2) $value) }}
{{- end }}
{{- $percent := trimSuffix "%" $value | atoi }}
{{- div (add (mul $percent $replicas) 99) 100 }}
{{- else }}
{{- int $value }}
{{- end }}
{{- end }}
