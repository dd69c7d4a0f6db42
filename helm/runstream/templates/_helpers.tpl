{{/* Names, labels and the parts every component shares. */}}

{{- define "runstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "runstream.fullname" -}}
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

{{/* Name of one component's objects: <fullname>-<component>. Call with (dict "root" $ "component" "ingest"). */}}
{{- define "runstream.componentName" -}}
{{- printf "%s-%s" (include "runstream.fullname" .root | trunc 52 | trimSuffix "-") .component }}
{{- end }}

{{- define "runstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "runstream.labels" -}}
helm.sh/chart: {{ include "runstream.chart" . }}
{{ include "runstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: runstream
{{- end }}

{{- define "runstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component. (dict "root" $ "component" "ingest") */}}
{{- define "runstream.componentLabels" -}}
{{ include "runstream.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "runstream.componentSelectorLabels" -}}
{{ include "runstream.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "runstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "runstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference of a component: its own fields win over the top-level image. (dict "root" $ "values" .Values.ingest) */}}
{{- define "runstream.image" -}}
{{- $repo := .values.image.repository | default .root.Values.image.repository }}
{{- $tag := .values.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- printf "%s:%s" $repo (toString $tag) }}
{{- end }}

{{- define "runstream.imagePullPolicy" -}}
{{- .values.image.pullPolicy | default .root.Values.image.pullPolicy }}
{{- end }}

{{/* The Secret the chart creates for whatever has no existingSecret. */}}
{{- define "runstream.secretName" -}}
{{- include "runstream.fullname" . }}
{{- end }}

{{- define "runstream.clickhouseSecretName" -}}
{{- .Values.clickhouse.existingSecret | default (include "runstream.secretName" .) }}
{{- end }}

{{- define "runstream.s3SecretName" -}}
{{- .Values.s3.existingSecret | default (include "runstream.secretName" .) }}
{{- end }}

{{- define "runstream.authSecretName" -}}
{{- .Values.auth.existingSecret | default (include "runstream.secretName" .) }}
{{- end }}

{{/* True when auth keys come from any Secret (mounted as a file). */}}
{{- define "runstream.authKeysMounted" -}}
{{- if or .Values.auth.existingSecret .Values.auth.apiKeys }}true{{ end }}
{{- end }}

{{- define "runstream.apiKeysPath" -}}
/etc/runstream/keys/api-keys.json
{{- end }}

{{- define "runstream.configPath" -}}
/etc/runstream/config/runstream.toml
{{- end }}

{{/* host:port of the query service, for the dashboard and NOTES. */}}
{{- define "runstream.queryEndpoint" -}}
{{- printf "%s.%s.svc:%d" (include "runstream.componentName" (dict "root" . "component" "query")) .Release.Namespace (int .Values.server.grpcPort) }}
{{- end }}

{{- define "runstream.ingestEndpoint" -}}
{{- printf "%s.%s.svc:%d" (include "runstream.componentName" (dict "root" . "component" "ingest")) .Release.Namespace (int .Values.server.grpcPort) }}
{{- end }}

{{/* The ClickHouse DSN. Kubernetes expands $(RUNSTREAM_CLICKHOUSE_PASSWORD) from the variable defined
before it (from a Secret), so the password never sits in the manifest. */}}
{{- define "runstream.clickhouseDsn" -}}
{{- $scheme := ternary "https" "http" .Values.clickhouse.secure }}
{{- printf "%s://%s:$(RUNSTREAM_CLICKHOUSE_PASSWORD)@%s:%d" $scheme (.Values.clickhouse.user | urlquery) .Values.clickhouse.host (int .Values.clickhouse.port) }}
{{- end }}

{{/* Environment of a server container: config file, ClickHouse DSN and S3 keys from Secrets. */}}
{{- define "runstream.serverEnv" -}}
- name: RUNSTREAM_CONFIG
  value: {{ include "runstream.configPath" . | quote }}
- name: HOME
  value: /tmp
- name: RUNSTREAM_CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "runstream.clickhouseSecretName" . }}
      key: {{ .Values.clickhouse.existingSecretPasswordKey }}
- name: RUNSTREAM_CLICKHOUSE_DSN
  value: {{ include "runstream.clickhouseDsn" . | quote }}
- name: RUNSTREAM_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "runstream.s3SecretName" . }}
      key: {{ .Values.s3.existingSecretAccessKeyKey }}
- name: RUNSTREAM_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "runstream.s3SecretName" . }}
      key: {{ .Values.s3.existingSecretSecretKeyKey }}
{{- end }}

{{/* A probe. (dict "root" $ "probe" .Values.ingest.readinessProbe "httpPort" "metrics") */}}
{{- define "runstream.probe" -}}
{{- if and (eq .probe.type "grpc") .root.Values.tls.enabled -}}
{{- /* the kubelet's gRPC probe cannot speak TLS: the metrics port's HTTP checks answer the same */}}
httpGet:
  path: {{ ternary "/readyz" "/livez" (eq (.grpcService | default "readiness") "readiness") }}
  port: metrics
{{- else if eq .probe.type "grpc" -}}
grpc:
  port: {{ int .root.Values.server.grpcPort }}
  {{- /* grpc_health.py: "liveness" answers while the process runs; "readiness" also checks the store and Kafka. */}}
  service: {{ .grpcService | default "readiness" }}
{{- else -}}
httpGet:
  path: {{ .probe.path | default "/metrics" }}
  port: {{ .httpPort }}
{{- end }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* Pod-level fields every component shares. (dict "root" $ "values" .Values.ingest) */}}
{{- define "runstream.podCommon" -}}
serviceAccountName: {{ .serviceAccountName | default (include "runstream.serviceAccountName" .root) }}
automountServiceAccountToken: {{ .root.Values.serviceAccount.automountServiceAccountToken }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml .values.topologySpreadConstraints | nindent 2 }}
{{- else if .root.Values.topologySpread.enabled }}
{{- $spread := .root.Values.topologySpread }}
topologySpreadConstraints:
  {{- range $spread.topologyKeys }}
  - maxSkew: {{ int $spread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "runstream.componentSelectorLabels" (dict "root" $.root "component" $.component) | nindent 8 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The three probes of a container. (dict "root" $ "values" .Values.ingest "httpPort" "metrics") */}}
{{- define "runstream.probes" -}}
{{- if .values.startupProbe.enabled }}
startupProbe:
  {{- include "runstream.probe" (dict "root" .root "probe" .values.startupProbe "httpPort" .httpPort "grpcService" "liveness") | nindent 2 }}
{{- end }}
{{- if .values.readinessProbe.enabled }}
readinessProbe:
  {{- include "runstream.probe" (dict "root" .root "probe" .values.readinessProbe "httpPort" .httpPort "grpcService" "readiness") | nindent 2 }}
{{- end }}
{{- if .values.livenessProbe.enabled }}
livenessProbe:
  {{- include "runstream.probe" (dict "root" .root "probe" .values.livenessProbe "httpPort" .httpPort "grpcService" "liveness") | nindent 2 }}
{{- end }}
{{- end }}

{{/* The scratch emptyDirs, with their size limits. */}}
{{- define "runstream.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratch.tmpSizeLimit }}
{{- end }}

{{/* Pod metadata: selector labels, extra labels and annotations (with config/secret checksums for a rollout on change). */}}
{{- define "runstream.podMetadata" -}}
labels:
  {{- include "runstream.componentSelectorLabels" (dict "root" .root "component" .component) | nindent 2 }}
  {{- with merge (deepCopy .values.podLabels) .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
  checksum/secret: {{ include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum }}
  {{- with merge (deepCopy .values.podAnnotations) .root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* TLS client settings of the dashboard and the helm test pod: env (RUNSTREAM_TLS_*) and their volume mounts / volumes. */}}
{{- define "runstream.tlsClientEnv" -}}
{{- if .Values.tls.enabled }}
- name: RUNSTREAM_TLS_CA
  value: /etc/runstream/tls-ca/ca.crt
{{- if .Values.tls.clientCertSecret }}
- name: RUNSTREAM_TLS_CLIENT_CERT
  value: /etc/runstream/tls-client/tls.crt
- name: RUNSTREAM_TLS_CLIENT_KEY
  value: /etc/runstream/tls-client/tls.key
{{- end }}
{{- end }}
{{- end }}

{{- define "runstream.tlsClientMounts" -}}
{{- if .Values.tls.enabled }}
- name: tls-ca
  mountPath: /etc/runstream/tls-ca
  readOnly: true
{{- if .Values.tls.clientCertSecret }}
- name: tls-client
  mountPath: /etc/runstream/tls-client
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "runstream.tlsClientVolumes" -}}
{{- if .Values.tls.enabled }}
- name: tls-ca
  secret:
    secretName: {{ .Values.tls.secretName }}
    items:
      - {key: {{ .Values.tls.caKey }}, path: ca.crt}
{{- if .Values.tls.clientCertSecret }}
- name: tls-client
  secret:
    secretName: {{ .Values.tls.clientCertSecret }}
{{- end }}
{{- end }}
{{- end }}
