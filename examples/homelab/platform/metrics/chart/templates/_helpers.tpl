{{- define "node-metrics.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}
{{- define "node-metrics.selector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
