{{/*
Short name of the chart, overridable.
*/}}
{{- define "helpers-include.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name.
*/}}
{{- define "helpers-include.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "helpers-include.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "helpers-include.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "helpers-include.selectorLabels" -}}
app.kubernetes.io/name: {{ include "helpers-include.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "helpers-include.labels" -}}
helm.sh/chart: {{ include "helpers-include.chart" . }}
{{ include "helpers-include.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Takes a dict: root context and a component name. */}}
{{- define "helpers-include.componentName" -}}
{{- printf "%s-%s" (include "helpers-include.fullname" .root) .component }}
{{- end }}
