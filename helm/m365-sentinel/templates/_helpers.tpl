{{- define "m365-sentinel.fullname" -}}
{{- printf "%s" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "m365-sentinel.labels" -}}
app.kubernetes.io/name: m365-sentinel
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "m365-sentinel.selector" -}}
app.kubernetes.io/name: m365-sentinel
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "m365-sentinel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "m365-sentinel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "m365-sentinel.secretName" -}}
{{- default (printf "%s-secrets" (include "m365-sentinel.fullname" .)) .Values.existingSecret -}}
{{- end -}}
