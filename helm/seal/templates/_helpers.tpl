{{/* Names, labels and the values every template shares. */}}

{{- define "seal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-seal, or the release name alone when it already contains the chart name. */}}
{{- define "seal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "seal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "seal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "seal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "seal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The image, by digest when one is given, else by its pinned tag. */}}
{{- define "seal.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}
{{- end -}}

{{- define "seal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "seal.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name the existing service account when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "seal.s3SecretName" -}}
{{- default (printf "%s-s3" (include "seal.fullname" .)) .Values.store.credentials.existingSecret -}}
{{- end -}}

{{- define "seal.configMapName" -}}
{{- printf "%s-config" (include "seal.fullname" .) -}}
{{- end -}}

{{- define "seal.cacheClaimName" -}}
{{- default (printf "%s-model-cache" (include "seal.fullname" .)) .Values.modelCache.existingClaim -}}
{{- end -}}

{{/* s3://<bucket>/<prefix>: the workflow's `store` parameter. */}}
{{- define "seal.storeURI" -}}
{{- $prefix := trimAll "/" .Values.store.prefix -}}
{{- if $prefix -}}
{{- printf "s3://%s/%s" .Values.store.bucket $prefix -}}
{{- else -}}
{{- printf "s3://%s" .Values.store.bucket -}}
{{- end -}}
{{- end -}}

{{/* Environment every seal container gets besides the S3 Secret's keys. */}}
{{- define "seal.env" -}}
- name: AWS_REGION
  value: {{ .Values.store.region | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.store.region | quote }}
{{- with .Values.store.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: HOME
  value: /tmp
- name: HF_HOME
  value: /cache/huggingface
- name: SEAL_CACHE
  value: /cache/seal
{{- if gt (int .Values.metrics.port) 0 }}
- name: SEAL_METRICS_PORT
  value: {{ .Values.metrics.port | int | toString | quote }}
{{- end }}
{{- with .Values.metrics.pushgateway }}
- name: SEAL_PUSHGATEWAY
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The run config as YAML: configs/<preset>.yaml (linked into files/configs/) with
runConfig.overrides merged over it. */}}
{{- define "seal.runConfig" -}}
{{- $text := .Files.Get (printf "files/configs/%s.yaml" .Values.runConfig.preset) -}}
{{- if not $text -}}
{{- $presets := list -}}
{{- range $p, $_ := .Files.Glob "files/configs/*.yaml" -}}
{{- $presets = append $presets (trimSuffix ".yaml" (base $p)) -}}
{{- end -}}
{{- fail (printf "runConfig.preset %q: the chart ships no configs/%s.yaml; presets: %s" .Values.runConfig.preset .Values.runConfig.preset (join ", " $presets)) -}}
{{- end -}}
{{- mergeOverwrite ($text | fromYaml) (deepCopy .Values.runConfig.overrides) | toYaml -}}
{{- end -}}
