{{/*
Deployment (or StatefulSet) of one server component (`runstream server --components ...`).
(dict "root" $ "component" "ingest" "values" .Values.ingest "components" "ingest" "grpc" true)
grpc: whether this process serves a gRPC API (ingest or query), so it gets the gRPC port.
kind: "StatefulSet" for the writers (stable pod names = static Kafka group members), else Deployment.
*/}}
{{- define "runstream.serverDeployment" -}}
{{- $root := .root }}
{{- $v := .values }}
{{- $name := include "runstream.componentName" (dict "root" $root "component" .component) }}
{{- $metrics := gt (int $root.Values.server.metricsPort) 0 }}
{{- $kind := .kind | default "Deployment" }}
{{- range $probeName, $probe := dict "readinessProbe" $v.readinessProbe "livenessProbe" $v.livenessProbe "startupProbe" $v.startupProbe }}
{{- if and $probe.enabled (eq $probe.type "http") (not $metrics) }}
{{- fail (printf "%s.%s uses the HTTP /metrics port, but server.metricsPort is 0 (off): enable metrics or use type grpc / enabled false" $.component $probeName) }}
{{- end }}
{{- if and $probe.enabled (eq $probe.type "grpc") $root.Values.tls.enabled (not $metrics) }}
{{- fail (printf "%s.%s has type grpc and tls.enabled, but the kubelet's gRPC probe cannot speak TLS and server.metricsPort is 0: enable metrics (its /readyz and /livez answer instead)" $.component $probeName) }}
{{- end }}
{{- if and $probe.enabled (eq $probe.type "grpc") (not $.grpc) }}
{{- fail (printf "%s.%s has type grpc, but this component serves no gRPC API (%s): use type http" $.component $probeName $.components) }}
{{- end }}
{{- end }}
apiVersion: apps/v1
kind: {{ $kind }}
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "runstream.componentLabels" . | nindent 4 }}
spec:
  {{- if not (and $v.autoscaling $v.autoscaling.enabled) }}
  replicas: {{ $v.replicaCount }}
  {{- end }}
  {{- if eq $kind "StatefulSet" }}
  serviceName: {{ $name }}-headless
  podManagementPolicy: Parallel
  {{- end }}
  selector:
    matchLabels:
      {{- include "runstream.componentSelectorLabels" . | nindent 6 }}
  template:
    metadata:
      {{- include "runstream.podMetadata" . | nindent 6 }}
    spec:
      {{- include "runstream.podCommon" . | nindent 6 }}
      containers:
        - name: {{ .component }}
          image: {{ include "runstream.image" . | quote }}
          imagePullPolicy: {{ include "runstream.imagePullPolicy" . }}
          args:
            - server
            - --components
            - {{ .components | quote }}
            - --bus
            - kafka
            - --log-level
            - {{ $root.Values.server.logLevel | quote }}
          ports:
            {{- if .grpc }}
            - name: grpc
              containerPort: {{ int $root.Values.server.grpcPort }}
              protocol: TCP
            {{- end }}
            {{- if $metrics }}
            - name: metrics
              containerPort: {{ int $root.Values.server.metricsPort }}
              protocol: TCP
            {{- end }}
          env:
            {{- include "runstream.serverEnv" $root | nindent 12 }}
            {{- if eq $kind "StatefulSet" }}
            # static Kafka group membership: the pod name survives a restart
            - name: RUNSTREAM_KAFKA_GROUP_INSTANCE_ID
              valueFrom:
                fieldRef: {fieldPath: metadata.name}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- include "runstream.probes" (dict "root" $root "values" $v "httpPort" "metrics") | nindent 10 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $v.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/runstream/config
              readOnly: true
            {{- if include "runstream.authKeysMounted" $root }}
            - name: api-keys
              mountPath: /etc/runstream/keys
              readOnly: true
            {{- end }}
            - name: data
              mountPath: {{ $root.Values.dataDir }}
            - name: tmp
              mountPath: /tmp
            {{- if $root.Values.tls.enabled }}
            - name: tls
              mountPath: /etc/runstream/tls
              readOnly: true
            {{- if $root.Values.tls.clientCASecret }}
            - name: tls-client-ca
              mountPath: /etc/runstream/tls-client-ca
              readOnly: true
            {{- end }}
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ include "runstream.fullname" $root }}
        {{- if include "runstream.authKeysMounted" $root }}
        - name: api-keys
          secret:
            secretName: {{ include "runstream.authSecretName" $root }}
            items:
              - key: {{ $root.Values.auth.existingSecretKey }}
                path: api-keys.json
        {{- end }}
        - name: data
          emptyDir:
            sizeLimit: {{ $root.Values.scratch.dataSizeLimit }}
        {{- include "runstream.scratchVolumes" $root | nindent 8 }}
        {{- if $root.Values.tls.enabled }}
        - name: tls
          secret:
            secretName: {{ $root.Values.tls.secretName }}
            items:
              - {key: tls.crt, path: tls.crt}
              - {key: tls.key, path: tls.key}
        {{- if $root.Values.tls.clientCASecret }}
        - name: tls-client-ca
          secret:
            secretName: {{ $root.Values.tls.clientCASecret }}
            items:
              - {key: {{ $root.Values.tls.clientCAKey }}, path: ca.crt}
        {{- end }}
        {{- end }}
{{- end }}

{{/*
Service of one component. (dict "root" $ "component" "ingest" "values" .Values.ingest "selectComponent" "ingest" "grpc" true "metrics" true)
*/}}
{{- define "runstream.serverService" -}}
{{- $root := .root }}
{{- $svc := .values.service }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "runstream.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "runstream.componentLabels" . | nindent 4 }}
    {{- if .metrics }}
    runstream.dev/metrics: "true"
    {{- end }}
  {{- with $svc.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $svc.type }}
  selector:
    {{- include "runstream.componentSelectorLabels" (dict "root" $root "component" .selectComponent) | nindent 4 }}
  ports:
    {{- if .grpc }}
    - name: grpc
      port: {{ int $root.Values.server.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
      {{- if and (eq $svc.type "NodePort") $svc.nodePort }}
      nodePort: {{ int $svc.nodePort }}
      {{- end }}
    {{- end }}
    {{- if .metrics }}
    - name: metrics
      port: {{ int $root.Values.server.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- end }}

{{/*
Headless Service a StatefulSet needs (its pods' DNS names). (dict "root" $ "component" "writer")
*/}}
{{- define "runstream.headlessService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "runstream.componentName" . }}-headless
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "runstream.componentLabels" . | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {{- include "runstream.componentSelectorLabels" . | nindent 4 }}
  {{- if gt (int .root.Values.server.metricsPort) 0 }}
  ports:
    - name: metrics
      port: {{ int .root.Values.server.metricsPort }}
      targetPort: metrics
  {{- end }}
{{- end }}

{{/*
PodDisruptionBudget and HorizontalPodAutoscaler of a component, each when it applies.
(dict "root" $ "component" "ingest" "values" .Values.ingest "kind" "Deployment")
*/}}
{{- define "runstream.scaling" -}}
{{- $v := .values }}
{{- $hpa := and $v.autoscaling $v.autoscaling.enabled }}
{{- if and $v.podDisruptionBudget.enabled (or $hpa (gt (int $v.replicaCount) 1)) }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "runstream.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "runstream.componentLabels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $v.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "runstream.componentSelectorLabels" . | nindent 6 }}
{{- end }}
{{- if $hpa }}
{{- if gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas) }}
{{- fail (printf "%s.autoscaling: minReplicas (%d) is above maxReplicas (%d)" .component (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- end }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "runstream.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "runstream.componentLabels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ .kind | default "Deployment" }}
    name: {{ include "runstream.componentName" . }}
  minReplicas: {{ int $v.autoscaling.minReplicas }}
  maxReplicas: {{ int $v.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ int $v.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- end }}
