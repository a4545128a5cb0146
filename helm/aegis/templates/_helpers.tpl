{{/*
Shared helpers. Names stay within 63 characters (Kubernetes label and DNS limits).
*/}}

{{/* The fifteen job names, one RabbitMQ queue each (aegis.jobs.<Job>). */}}
{{- define "aegis.jobNames" -}}
RescanQueueJob RescanJob ExceptionJob TicketingJob ScanSyncJob ScanCloseJob BulkUpdateJob VulnSyncJob CloudSyncJob AssetSyncJob CISRescanJob TicketSyncJob CloudDecommissionJob ImageRescanJob DiagnosticJob
{{- end -}}

{{- define "aegis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aegis.fullname" -}}
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

{{- define "aegis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "aegis.labels" -}}
helm.sh/chart: {{ include "aegis.chart" . }}
{{ include "aegis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aegis
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "aegis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aegis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aegis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aegis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "aegis.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the URLs and the keyring: the chart's own or an existing one. */}}
{{- define "aegis.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- include "aegis.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* Whether a keyring is configured (always assumed with an existing Secret, whose key is optional). */}}
{{- define "aegis.hasEncryptionKey" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.encryptionKey -}}true{{- end -}}
{{- end -}}

{{/*
Deep-merges .src into .dst (a map, modified in place); .src wins, including
false, 0 and "" (sprig's merge functions skip such "empty" values, which would
make `autoscaling: {enabled: false}` in a pool impossible). Lists are replaced.
*/}}
{{- define "aegis.mergeInto" -}}
{{- $dst := .dst -}}
{{- range $k, $v := .src -}}
{{- $d := get $dst $k -}}
{{- if and (kindIs "map" $v) (kindIs "map" $d) -}}
{{- include "aegis.mergeInto" (dict "dst" $d "src" $v) -}}
{{- else -}}
{{- $_ := set $dst $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The effective settings of every worker pool, as a JSON list: worker defaults
with the pool's overrides merged in, plus the computed fields
"fullname" (Deployment name), "jobList" (job names consumed) and "queues".
A pool without a jobs list takes every job that no other pool lists ("jobs"
then holds that list, or stays empty when no pool is dedicated, meaning all).
Validates pool names (unique) and job names.
*/}}
{{- define "aegis.workerPools" -}}
{{- $root := . -}}
{{- $defaults := omit (deepCopy .Values.worker) "pools" -}}
{{- $known := splitList " " (include "aegis.jobNames" .) -}}
{{- $seen := dict -}}
{{- $pools := list -}}
{{- /* Job names some pool lists explicitly: a pool without a list takes the others. */ -}}
{{- $dedicated := list -}}
{{- range .Values.worker.pools -}}
{{- $dedicated = concat $dedicated (.jobs | default list) -}}
{{- end -}}
{{- $rest := list -}}
{{- range $known -}}
{{- if not (has . $dedicated) -}}{{- $rest = append $rest . -}}{{- end -}}
{{- end -}}
{{- if not .Values.worker.pools -}}
{{- fail "worker.pools: give at least one pool (e.g. [{name: default}])" -}}
{{- end -}}
{{- range $pool := .Values.worker.pools -}}
{{- if hasKey $seen $pool.name -}}
{{- fail (printf "worker.pools: the pool name %q is used twice" $pool.name) -}}
{{- end -}}
{{- $_ := set $seen $pool.name true -}}
{{- $p := deepCopy $defaults -}}
{{- include "aegis.mergeInto" (dict "dst" $p "src" (deepCopy $pool)) -}}
{{- $jobs := $p.jobs -}}
{{- if not $jobs -}}
{{- if not $rest -}}
{{- fail (printf "worker.pools[%s]: jobs is empty, meaning every job no other pool lists, but the other pools list them all" $pool.name) -}}
{{- end -}}
{{- $jobs = $rest -}}
{{- /* No pool is dedicated: leave AEGIS_WORKER_JOBS empty (all jobs the worker knows). */ -}}
{{- if not $dedicated -}}{{- $_ := set $p "jobs" list -}}{{- else -}}{{- $_ := set $p "jobs" $rest -}}{{- end -}}
{{- end -}}
{{- range $jobs -}}
{{- if not (has . $known) -}}
{{- fail (printf "worker.pools[%s].jobs: unknown job name %q (known: %s)" $pool.name . (join ", " $known)) -}}
{{- end -}}
{{- end -}}
{{- $queues := list -}}
{{- range $jobs -}}
{{- $q := printf "aegis.jobs.%s" . -}}
{{- if $root.Values.config.namespace -}}{{- $q = printf "%s.%s" $root.Values.config.namespace $q -}}{{- end -}}
{{- $queues = append $queues $q -}}
{{- end -}}
{{- $_ := set $p "fullname" (printf "%s-worker-%s" (include "aegis.fullname" $root) $pool.name | trunc 63 | trimSuffix "-") -}}
{{- $_ := set $p "jobList" $jobs -}}
{{- $_ := set $p "queues" $queues -}}
{{- $pools = append $pools $p -}}
{{- end -}}
{{- toJson $pools -}}
{{- end -}}

{{/* Environment shared by coordinators and workers: secrets, pod identity, tracing. (.root, .serviceName) */}}
{{- define "aegis.commonEnv" -}}
{{- $v := .root.Values -}}
- name: AEGIS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "aegis.secretName" .root }}
      key: {{ $v.secrets.keys.databaseUrl }}
- name: AEGIS_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "aegis.secretName" .root }}
      key: {{ $v.secrets.keys.amqpUrl }}
- name: AEGIS_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "aegis.secretName" .root }}
      key: {{ $v.secrets.keys.redisUrl }}
{{- if include "aegis.hasEncryptionKey" .root }}
{{- if $v.secrets.encryptionKeyAsFile }}
- name: AEGIS_ENCRYPTION_KEY_FILE
  value: /etc/aegis/keyring/encryption-key
{{- else }}
- name: AEGIS_ENCRYPTION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "aegis.secretName" .root }}
      key: {{ $v.secrets.keys.encryptionKey }}
      optional: {{ not (empty $v.secrets.existingSecret) }}
{{- end }}
{{- end }}
{{- if $v.otel.enabled }}
- name: OTEL_SERVICE_NAME
  value: {{ .serviceName | quote }}
{{- end }}
{{- end -}}

{{/* Volumes every Aegis pod mounts: a writable /tmp (the root filesystem is read-only) and the keyring file. */}}
{{- define "aegis.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if and .Values.secrets.encryptionKeyAsFile (include "aegis.hasEncryptionKey" .) }}
- name: keyring
  secret:
    secretName: {{ include "aegis.secretName" . }}
    defaultMode: 0440
    optional: {{ not (empty .Values.secrets.existingSecret) }}
    items:
      - key: {{ .Values.secrets.keys.encryptionKey }}
        path: encryption-key
{{- end }}
{{- end -}}

{{- define "aegis.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if and .Values.secrets.encryptionKeyAsFile (include "aegis.hasEncryptionKey" .) }}
- name: keyring
  mountPath: /etc/aegis/keyring
  readOnly: true
{{- end }}
{{- end -}}

{{/* Startup, liveness and readiness probes on the health endpoints. */}}
{{- define "aegis.probes" -}}
{{- $p := .Values.probes -}}
{{- if $p.startup.enabled }}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ $p.startup.periodSeconds }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
{{- end }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- end -}}

{{/* Pod annotations: operator's plus checksums that roll the pods when chart-managed settings change. */}}
{{- define "aegis.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}
