{{/* The spawner's environment: every setting it reads (rexec_spawner.config, rexec.auth). */}}
{{- define "rexec.spawnerEnv" -}}
- name: REXEC_SPAWNER_BACKEND
  value: kubernetes
- name: REXEC_SPAWNER_HOST
  value: "0.0.0.0"
- name: REXEC_SPAWNER_PORT
  value: {{ .Values.spawner.port | quote }}
- name: REXEC_HOME
  value: /var/lib/rexec
- name: REXEC_SPAWNER_DATA_DIR
  value: /var/lib/rexec/stack
- name: REXEC_SIGNING_KEY_FILE
  value: /etc/rexec/signing/signing.key
- name: REXEC_BROKER_URL
  value: {{ include "rexec.brokerPublicUrl" . | quote }}
- name: REXEC_BROKER_BACKEND_URL
  value: {{ include "rexec.brokerBackendUrl" . | quote }}
- name: REXEC_BROKER_INTERNAL_URL
  value: {{ include "rexec.brokerInternalUrl" . | quote }}
{{- if .Values.curve.enabled }}
- name: REXEC_BROKER_PUBLIC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "rexec.curveSecretName" . }}
      key: broker.pub
{{- end }}
- name: REXEC_WORKER_READY_TIMEOUT
  value: {{ .Values.spawner.workerReadyTimeout | quote }}
- name: REXEC_SPAWNER_MAX_BODY_BYTES
  value: {{ .Values.spawner.maxBodyBytes | int64 | quote }}
- name: REXEC_IDLE_TIMEOUT
  value: {{ .Values.worker.idleTimeout | quote }}
- name: REXEC_CULL_INTERVAL
  value: {{ .Values.worker.cullInterval | quote }}
- name: REXEC_WORKER_CREDENTIAL_TTL
  value: {{ .Values.worker.credentialTtl | quote }}
- name: REXEC_WORKER_HUNG_AFTER
  value: {{ .Values.worker.hungAfter | quote }}
- name: REXEC_MAX_WORKERS_PER_USER
  value: {{ .Values.worker.maxPerUser | int64 | quote }}
- name: REXEC_K8S_RELEASE
  value: {{ include "rexec.releaseLabel" . | quote }}
- name: REXEC_K8S_NAMESPACE_PREFIX
  value: {{ include "rexec.namespacePrefix" . | quote }}
- name: REXEC_K8S_POD_SECURITY_VERSION
  value: {{ .Values.worker.podSecurityVersion | quote }}
- name: REXEC_K8S_WORKER_IMAGE
  value: {{ include "rexec.image" (dict "root" . "image" .Values.worker.image) | quote }}
- name: REXEC_K8S_IMAGE_PULL_POLICY
  value: {{ .Values.worker.image.pullPolicy | quote }}
{{- if .Values.worker.command }}
- name: REXEC_K8S_WORKER_COMMAND
  value: {{ .Values.worker.command | quote }}
{{- end }}
- name: REXEC_K8S_RUN_AS_USER
  value: {{ .Values.worker.runAsUser | quote }}
- name: REXEC_K8S_CPU_REQUEST
  value: {{ .Values.worker.resources.cpu_request | quote }}
- name: REXEC_K8S_CPU_LIMIT
  value: {{ .Values.worker.resources.cpu_limit | quote }}
- name: REXEC_K8S_MEMORY_REQUEST
  value: {{ .Values.worker.resources.memory_request | quote }}
- name: REXEC_K8S_MEMORY_LIMIT
  value: {{ .Values.worker.resources.memory_limit | quote }}
- name: REXEC_K8S_EPHEMERAL_STORAGE_REQUEST
  value: {{ .Values.worker.resources.ephemeral_storage_request | quote }}
- name: REXEC_K8S_EPHEMERAL_STORAGE_LIMIT
  value: {{ .Values.worker.resources.ephemeral_storage_limit | quote }}
{{- if .Values.worker.profiles }}
- name: REXEC_K8S_PROFILES
  value: {{ toJson .Values.worker.profiles | quote }}
{{- end }}
- name: REXEC_K8S_PROFILE
  value: {{ .Values.worker.profile | quote }}
{{- if .Values.worker.nodeSelector }}
- name: REXEC_K8S_NODE_SELECTOR
  value: {{ toJson .Values.worker.nodeSelector | quote }}
{{- end }}
{{- if not .Values.broker.workerUrl }}
# Narrows each worker's egress to the broker pods of this release.
- name: REXEC_K8S_BROKER_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: REXEC_K8S_BROKER_POD_LABELS
  value: {{ include "rexec.brokerPodLabelsCsv" . | quote }}
{{- end }}
- name: REXEC_K8S_DNS_NAMESPACE
  value: {{ .Values.worker.dns.namespace | quote }}
{{- if .Values.worker.dns.namespaceLabels }}
- name: REXEC_K8S_DNS_NAMESPACE_LABELS
  value: {{ include "rexec.labelsCsv" .Values.worker.dns.namespaceLabels | quote }}
{{- end }}
{{- if .Values.worker.dns.podLabels }}
- name: REXEC_K8S_DNS_POD_LABELS
  value: {{ include "rexec.labelsCsv" .Values.worker.dns.podLabels | quote }}
{{- end }}
{{- if .Values.worker.dns.cidrs }}
- name: REXEC_K8S_DNS_CIDRS
  value: {{ join "," .Values.worker.dns.cidrs | quote }}
{{- end }}
{{- if .Values.worker.environments.packageIndexCidrs }}
- name: REXEC_K8S_PACKAGE_INDEX_CIDRS
  value: {{ join "," .Values.worker.environments.packageIndexCidrs | quote }}
{{- end }}
- name: REXEC_K8S_ENV_VOLUME_SIZE
  value: {{ .Values.worker.environments.volumeSize | quote }}
- name: REXEC_K8S_TMP_VOLUME_SIZE
  value: {{ .Values.worker.tmpVolumeSize | quote }}
- name: REXEC_K8S_HOME_VOLUME_SIZE
  value: {{ .Values.worker.homeVolumeSize | quote }}
- name: REXEC_ENV_ALLOW_OPTIONS
  value: {{ ternary "1" "0" .Values.worker.environments.allowOptions | quote }}
- name: REXEC_ENV_ALLOW_URLS
  value: {{ ternary "1" "0" .Values.worker.environments.allowUrls | quote }}
{{- include "rexec.authEnv" . | trim | nindent 0 }}
{{- end -}}
