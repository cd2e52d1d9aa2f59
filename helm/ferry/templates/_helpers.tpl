{{/* Names: at most 63 characters (a DNS label), as Kubernetes requires. */}}
{{- define "ferry.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ferry.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's name: <fullname>-<component>, truncated to 63. */}}
{{- define "ferry.componentName" -}}
{{- printf "%s-%s" (include "ferry.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "ferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: ferry
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "ferry.selectorLabels" . }}
{{- end -}}

{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* <registry>/ferry-<component>:<tag>: the names `ferry render` writes (ferry.images). */}}
{{- define "ferry.image" -}}
{{- printf "%s/ferry-%s:%s" (.root.Values.images.registry | trimSuffix "/") .component (.root.Values.images.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{- define "ferry.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 1000 }}
runAsGroup: {{ .uid | default 1000 }}
fsGroup: {{ .uid | default 1000 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ferry.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ferry.pullSecrets" -}}
{{- with .Values.images.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The MLflow Service's in-cluster URL: what jobs and the operator track to. */}}
{{- define "ferry.trackingUri" -}}
{{- printf "http://%s.%s.svc.cluster.local:%d" (include "ferry.componentName" (dict "root" . "component" "mlflow")) .Release.Namespace (int .Values.mlflow.port) -}}
{{- end -}}

{{/* The backend store URI's source: an env var definition. */}}
{{- define "ferry.backendStoreEnv" -}}
{{- if eq .Values.mlflow.backendStore "postgresql" }}
{{- if .Values.postgresql.enabled }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.postgresql.existingSecret }}
      key: password
- name: MLFLOW_BACKEND_STORE_URI
  value: {{ printf "postgresql://%s:$(POSTGRES_PASSWORD)@%s:5432/%s" .Values.postgresql.username (include "ferry.componentName" (dict "root" . "component" "postgresql")) .Values.postgresql.database | quote }}
{{- else }}
- name: MLFLOW_BACKEND_STORE_URI
  valueFrom:
    secretKeyRef:
      name: {{ .Values.mlflow.database.existingSecret }}
      key: {{ .Values.mlflow.database.uriKey }}
{{- end }}
{{- else }}
- name: MLFLOW_BACKEND_STORE_URI
  value: sqlite:////mlflow/mlflow.db
{{- end }}
{{- end -}}
