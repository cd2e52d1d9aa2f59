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

{{/* The MLflow server's ServiceAccount (also its migration Job's). */}}
{{- define "ferry.mlflowServiceAccountName" -}}
{{- $sa := .Values.mlflow.serviceAccount -}}
{{- if $sa.create -}}
{{- $sa.name | default (include "ferry.componentName" (dict "root" . "component" "mlflow")) -}}
{{- else -}}
{{- $sa.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* "true" when the schema migration is a Job run as a pre-install/pre-upgrade hook: an existing
database only. The bundled PostgreSQL does not exist before install, and SQLite lives on the
server's own ReadWriteOnce volume: there the migration runs in the server's pod (helm/README.md). */}}
{{- define "ferry.migrationJob" -}}
{{- if and .Values.mlflow.enabled (eq .Values.mlflow.backendStore "postgresql") (not .Values.postgresql.enabled) -}}
true
{{- end -}}
{{- end -}}

{{/* Where the runs and the registry are, as environment variables: MLFLOW_BACKEND_STORE_URI
(which `mlflow server` reads itself: the URI never reaches any process's arguments). The bundled
PostgreSQL's URI names no password: libpq reads it from PGPASSWORD. */}}
{{- define "ferry.backendStoreEnv" -}}
{{- if eq .Values.mlflow.backendStore "postgresql" }}
{{- if .Values.postgresql.enabled }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.postgresql.existingSecret }}
      key: password
- name: MLFLOW_BACKEND_STORE_URI
  value: {{ printf "postgresql://%s@%s:5432/%s" .Values.postgresql.username (include "ferry.componentName" (dict "root" . "component" "postgresql")) .Values.postgresql.database | quote }}
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
{{- if .Values.mlflow.auth.enabled }}
# the basic-auth app's users and permissions: beside the runs
- name: FERRY_AUTH_DATABASE_URI
  value: {{ if eq .Values.mlflow.backendStore "postgresql" }}$(MLFLOW_BACKEND_STORE_URI){{ else }}sqlite:////mlflow/basic_auth.db{{ end }}
{{- end }}
{{- end -}}

{{/* The schema migration's container: `mlflow db upgrade` with the URI read from the environment
(the command takes it only as an argument, where `ps` and the pod's status would show it), under
a PostgreSQL advisory lock so that replicas or Jobs starting together take turns; then, with
mlflow.auth, the auth app's schema in the same database. */}}
{{- define "ferry.dbUpgradeContainer" -}}
name: db-upgrade
image: {{ include "ferry.image" (dict "root" . "component" "mlflow") }}
imagePullPolicy: {{ .Values.images.pullPolicy }}
command:
  - python
  - -c
  - |
    import os
    import sqlalchemy
    from mlflow.db import upgrade
    from mlflow.store.db.utils import create_sqlalchemy_engine_with_retry
    url = os.environ["MLFLOW_BACKEND_STORE_URI"]
    engine = create_sqlalchemy_engine_with_retry(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        if engine.dialect.name == "postgresql":
            lock.execute(sqlalchemy.text("SELECT pg_advisory_lock(hashtext('ferry: mlflow db upgrade'))"))
        upgrade.main([url], prog_name="mlflow db upgrade", standalone_mode=False)
        if os.environ.get("FERRY_AUTH_DATABASE_URI"):
            from mlflow.server.auth.db.utils import migrate_if_needed
            auth = create_sqlalchemy_engine_with_retry(os.environ["FERRY_AUTH_DATABASE_URI"])
            migrate_if_needed(auth, "head")
            auth.dispose()
    engine.dispose()
    print("the database schema is MLflow's current one")
env:
  {{- include "ferry.backendStoreEnv" . | nindent 2 }}
resources:
  {{- toYaml .Values.mlflow.migration.resources | nindent 2 }}
securityContext:
  {{- include "ferry.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  {{- if not (include "ferry.migrationJob" .) }}
  - {name: data, mountPath: /mlflow}
  {{- end }}
  - {name: tmp, mountPath: /tmp}
{{- end -}}

{{/* The basic-auth app's environment: its configuration file (written by the auth-config init
container) and the admin user from the Secret; MLflow reads MLFLOW_AUTH_ADMIN_* over the file. */}}
{{- define "ferry.authEnv" -}}
- name: MLFLOW_AUTH_CONFIG_PATH
  value: /etc/mlflow-auth/basic_auth.ini
- name: MLFLOW_AUTH_ADMIN_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ .Values.mlflow.auth.existingSecret }}, key: username}
- name: MLFLOW_AUTH_ADMIN_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.mlflow.auth.existingSecret }}, key: password}
- name: MLFLOW_FLASK_SERVER_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ .Values.mlflow.auth.existingSecret }}, key: secret-key}
{{- end -}}
