{{/* Names, labels and shared snippets of the rexec chart. */}}

{{- define "rexec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource-name prefix: the release name, plus the chart name unless already contained. */}}
{{- define "rexec.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rexec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rexec.brokerName" -}}{{ include "rexec.fullname" . }}-broker{{- end -}}
{{- define "rexec.brokerExternalName" -}}{{ include "rexec.fullname" . }}-broker-external-ip{{- end -}}
{{- define "rexec.brokerInternalName" -}}{{ include "rexec.fullname" . }}-broker-internal-ip{{- end -}}
{{- define "rexec.spawnerName" -}}{{ include "rexec.fullname" . }}-spawner{{- end -}}
{{/* Cluster-scoped, so the namespace is part of the name: two releases never collide. */}}
{{- define "rexec.spawnerClusterRoleName" -}}
{{- printf "%s-%s-spawner" .Release.Namespace (include "rexec.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "rexec.keygenName" -}}{{ include "rexec.fullname" . }}-curve-keygen{{- end -}}

{{- define "rexec.spawnerServiceAccountName" -}}
{{- if .Values.spawner.serviceAccount.create -}}
{{- default (include "rexec.spawnerName" .) .Values.spawner.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.spawner.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "rexec.signingSecretName" -}}
{{- default (printf "%s-signing-key" (include "rexec.fullname" .)) .Values.signingKey.existingSecret -}}
{{- end -}}

{{- define "rexec.curveSecretName" -}}
{{- default (printf "%s-curve" (include "rexec.fullname" .)) .Values.curve.existingSecret -}}
{{- end -}}

{{/* Labels on every object; "component" is added per object. */}}
{{- define "rexec.labels" -}}
helm.sh/chart: {{ include "rexec.chart" . }}
app.kubernetes.io/name: {{ include "rexec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rexec
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "broker"). */}}
{{- define "rexec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rexec.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "rexec.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Address workers use for the broker's backend port (in-cluster unless broker.workerUrl). */}}
{{- define "rexec.brokerBackendUrl" -}}
{{- if .Values.broker.workerUrl -}}
{{- .Values.broker.workerUrl -}}
{{- else -}}
{{- printf "tcp://%s.%s.svc.%s:%v" (include "rexec.brokerInternalName" .) .Release.Namespace .Values.clusterDomain .Values.broker.backendPort -}}
{{- end -}}
{{- end -}}

{{/* Address clients are given for the broker's client port. */}}
{{- define "rexec.brokerPublicUrl" -}}
{{- if .Values.broker.publicUrl -}}
{{- .Values.broker.publicUrl -}}
{{- else -}}
{{- printf "tcp://%s.%s.svc.%s:%v" (include "rexec.brokerExternalName" .) .Release.Namespace .Values.clusterDomain .Values.broker.frontendPort -}}
{{- end -}}
{{- end -}}

{{/* The identity provider URL: authApiUrl, else global.authApiUrl (set once for an umbrella
chart whose other services validate tokens against the same provider). */}}
{{- define "rexec.authApiUrl" -}}
{{- default (dig "authApiUrl" "" (.Values.global | default dict)) .Values.authApiUrl -}}
{{- end -}}

{{/* Identity settings read by rexec.auth.AuthSettings.from_env (broker and spawner). */}}
{{- define "rexec.authEnv" -}}
{{- with include "rexec.authApiUrl" . }}
- name: AUTH_API_URL
  value: {{ . | quote }}
{{- end }}
- name: REXEC_AUTH_METHOD
  value: {{ .Values.auth.method | quote }}
{{- if .Values.auth.allowedGroups }}
- name: REXEC_ALLOWED_GROUPS
  value: {{ join "," .Values.auth.allowedGroups | quote }}
{{- end }}
- name: REXEC_AUTH_CACHE_TTL
  value: {{ .Values.auth.cacheTtl | quote }}
- name: REXEC_AUTH_TIMEOUT
  value: {{ .Values.auth.timeout | quote }}
{{- if .Values.auth.tokenFileSecret.name }}
- name: REXEC_TOKEN_FILE
  value: /etc/rexec/tokens/{{ .Values.auth.tokenFileSecret.key }}
{{- end }}
{{- end -}}

{{/* Volumes shared by the broker and the spawner: signing key, token file. */}}
{{- define "rexec.secretVolumes" -}}
- name: signing-key
  secret:
    secretName: {{ include "rexec.signingSecretName" . }}
    defaultMode: 0400
    items:
      - key: signing.key
        path: signing.key
{{- if .Values.auth.tokenFileSecret.name }}
- name: token-file
  secret:
    secretName: {{ .Values.auth.tokenFileSecret.name }}
    defaultMode: 0400
    items:
      - key: {{ .Values.auth.tokenFileSecret.key }}
        path: {{ .Values.auth.tokenFileSecret.key }}
{{- end }}
{{- end -}}

{{- define "rexec.secretVolumeMounts" -}}
- name: signing-key
  mountPath: /etc/rexec/signing
  readOnly: true
{{- if .Values.auth.tokenFileSecret.name }}
- name: token-file
  mountPath: /etc/rexec/tokens
  readOnly: true
{{- end }}
{{- end -}}

{{- define "rexec.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Value of the rexec.dev/release label the spawner puts on its objects (REXEC_K8S_RELEASE). */}}
{{- define "rexec.releaseLabel" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "rexec.namespacePrefix" -}}
{{- default (printf "%s-u-" (.Release.Name | trunc 17 | trimSuffix "-")) .Values.worker.namespacePrefix -}}
{{- end -}}

{{/* The broker pods' selector labels as "k=v,k=v" (REXEC_K8S_BROKER_POD_LABELS). */}}
{{- define "rexec.brokerPodLabelsCsv" -}}
{{- $labels := include "rexec.selectorLabels" (dict "root" . "component" "broker") | fromYaml -}}
{{- include "rexec.labelsCsv" $labels -}}
{{- end -}}

{{/* A label map as the spawner's REXEC_K8S_*_LABELS settings read it: key=value,key=value. */}}
{{- define "rexec.labelsCsv" -}}
{{- $labels := . -}}
{{- $pairs := list -}}
{{- range $key := keys $labels | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%s" $key (index $labels $key)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* Address the spawner asks the broker frontend about worker activity at. */}}
{{- define "rexec.brokerInternalUrl" -}}
{{- if .Values.broker.internalUrl -}}
{{- .Values.broker.internalUrl -}}
{{- else -}}
{{- printf "tcp://%s.%s.svc.%s:%v" (include "rexec.brokerExternalName" .) .Release.Namespace .Values.clusterDomain .Values.broker.frontendPort -}}
{{- end -}}
{{- end -}}

{{/* Whether the chart generates the CurveZMQ keypair (with the key-generation Job). */}}
{{- define "rexec.curveKeygenEnabled" -}}
{{- if and .Values.curve.enabled (not .Values.curve.existingSecret) .Values.curve.generate -}}true{{- end -}}
{{- end -}}
