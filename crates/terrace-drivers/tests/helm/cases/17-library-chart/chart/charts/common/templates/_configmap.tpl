{{/* A whole ConfigMap; takes a dict with root, name and data. */}}
{{- define "common.configmap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "common.fullname" .root }}-{{ .name }}
  labels:
    {{- include "common.labels" .root | nindent 4 }}
data:
  {{- range $k, $v := .data }}
  {{ $k }}: {{ $v | quote }}
  {{- end }}
{{- end -}}
