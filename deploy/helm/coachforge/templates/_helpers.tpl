{{/* Names ---------------------------------------------------------------------------------------- */}}

{{- define "coachforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "coachforge.fullname" -}}
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

{{/* "<fullname>-<component>" — call with (dict "root" $ "component" "dataset") */}}
{{- define "coachforge.componentName" -}}
{{- printf "%s-%s" (include "coachforge.fullname" .root | trunc 45 | trimSuffix "-") .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "coachforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels ---------------------------------------------------------------------------------------- */}}

{{- define "coachforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coachforge.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "coachforge.labels" -}}
helm.sh/chart: {{ include "coachforge.chart" .root }}
{{ include "coachforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: coachforge
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of resources that belong to no single component. */}}
{{- define "coachforge.commonLabels" -}}
{{ include "coachforge.labels" (dict "root" . "component" "platform") }}
{{- end -}}

{{/* Images ---------------------------------------------------------------------------------------- */}}

{{/* call with (dict "root" $ "image" .Values.dataset.image) */}}
{{- define "coachforge.image" -}}
{{- $repo := .image.repository -}}
{{- if .root.Values.image.registry -}}{{- $repo = printf "%s/%s" (trimSuffix "/" .root.Values.image.registry) $repo -}}{{- end -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if hasPrefix "sha256:" $tag -}}
{{- printf "%s@%s" $repo $tag -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{- define "coachforge.pullPolicy" -}}
{{- .image.pullPolicy | default .root.Values.image.pullPolicy -}}
{{- end -}}

{{- define "coachforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "coachforge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The service account of the migrations hook: one created as a hook of its own (weight -10, before the Job)
     while serviceAccount.create, since the release's service account does not exist yet before install. */}}
{{- define "coachforge.hookServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- include "coachforge.componentName" (dict "root" . "component" "hooks") -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Capabilities: custom resources are rendered only where their API exists (or the values say to assume it). */}}
{{- define "coachforge.monitoringApi" -}}
{{- if or .Values.metrics.assumeApiPresent (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true{{- end -}}
{{- end -}}

{{- define "coachforge.kedaApi" -}}
{{- if or .Values.trainerWorker.autoscaling.assumeApiPresent (.Capabilities.APIVersions.Has "keda.sh/v1alpha1") -}}true{{- end -}}
{{- end -}}

{{/* Secrets and connection settings ------------------------------------------------------------- */}}

{{- define "coachforge.authSecretName" -}}
{{- printf "%s-auth" (include "coachforge.fullname" .) -}}
{{- end -}}

{{/* A generated credential (plain text). With secrets.seed: sha256 of seed, namespace, Secret and key, the same
     in every render (GitOps). Without: read back from the live Secret, else random (the helm CLI only: `helm
     template` cannot read the cluster). call with (dict "root" $ "secret" <name> "key" <key> "prefix" "cf-") */}}
{{- define "coachforge.generatedValue" -}}
{{- $root := .root -}}
{{- $prefix := .prefix | default "" -}}
{{- if $root.Values.secrets.seed -}}
{{- printf "%s%s" $prefix (printf "%s/%s/%s/%s" $root.Values.secrets.seed $root.Release.Namespace .secret .key | sha256sum) -}}
{{- else -}}
{{- $existing := (lookup "v1" "Secret" $root.Release.Namespace .secret).data | default dict -}}
{{- $found := index $existing .key -}}
{{- if $found -}}{{- b64dec $found -}}{{- else -}}{{- printf "%s%s" $prefix (randAlphaNum 48) -}}{{- end -}}
{{- end -}}
{{- end -}}

{{/* Secret holding the engines' API key ("" = none: external engines without a key). */}}
{{- define "coachforge.engineApiKeySecret" -}}
{{- if .Values.engine.apiKey.existingSecret -}}
{{- .Values.engine.apiKey.existingSecret -}}
{{- else if .Values.engine.enabled -}}
{{- include "coachforge.authSecretName" . -}}
{{- end -}}
{{- end -}}

{{- define "coachforge.minioName" -}}
{{- include "coachforge.componentName" (dict "root" . "component" "minio") -}}
{{- end -}}

{{- define "coachforge.minioSecretName" -}}
{{- .Values.minio.auth.existingSecret | default (include "coachforge.minioName" .) -}}
{{- end -}}

{{- define "coachforge.minioEndpoint" -}}
{{- printf "http://%s.%s.svc:9000" (include "coachforge.minioName" .) .Release.Namespace -}}
{{- end -}}

{{/* The csi-s3 driver's Secret for the artifacts bucket: the given one, else the chart's for the bundled MinIO. */}}
{{- define "coachforge.csiS3SecretName" -}}
{{- .Values.artifacts.s3.secret.name | default (include "coachforge.componentName" (dict "root" . "component" "csi-s3")) -}}
{{- end -}}

{{/* DATABASE_URL (and what it is built from) of every pod that reads the database. */}}
{{- define "coachforge.databaseEnv" -}}
{{- if .Values.postgresql.enabled }}
{{- $pg := .Values.postgresql }}
{{- if $pg.auth.existingSecret }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $pg.auth.existingSecret }}
      key: {{ $pg.auth.passwordKey }}
- name: DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s:$(PGPASSWORD)@%s:5432/%s" $pg.username (include "coachforge.componentName" (dict "root" . "component" "postgresql")) $pg.database | quote }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "coachforge.componentName" (dict "root" . "component" "postgresql") }}
      key: database-url
{{- end }}
{{- else if .Values.externalDatabase.urlFromKeys.enabled }}
{{- $db := .Values.externalDatabase }}
{{- range $var, $key := dict "PGUSER" $db.urlFromKeys.usernameKey "PGPASSWORD" $db.urlFromKeys.passwordKey "PGHOST" $db.urlFromKeys.hostKey "PGPORT" $db.urlFromKeys.portKey "PGDATABASE" $db.urlFromKeys.databaseKey }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $db.existingSecret }}
      key: {{ $key }}
{{- end }}
- name: DATABASE_URL
  value: "postgresql+psycopg://$(PGUSER):$(PGPASSWORD)@$(PGHOST):$(PGPORT)/$(PGDATABASE)"
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalDatabase.existingSecret }}
      key: {{ .Values.externalDatabase.existingSecretKey }}
{{- end }}
{{- end -}}

{{/* S3 credentials of the registry and inference (objectStorage): the given Secret, else the bundled MinIO's. */}}
{{- define "coachforge.objectStorageEnv" -}}
{{- $os := .Values.objectStorage -}}
{{- $secret := $os.credentials.existingSecret -}}
{{- $idKey := $os.credentials.accessKeyKey -}}
{{- $keyKey := $os.credentials.secretKeyKey -}}
{{- if and (not $secret) .Values.minio.enabled -}}
{{- $secret = include "coachforge.minioSecretName" . -}}
{{- $idKey = .Values.minio.auth.userKey -}}
{{- $keyKey = .Values.minio.auth.passwordKey -}}
{{- end -}}
{{- if $secret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $idKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keyKey }}
{{- end }}
{{- with $os.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "coachforge.objectStorageEndpoint" -}}
{{- .Values.objectStorage.endpoint | default (ternary (include "coachforge.minioEndpoint" .) "" .Values.minio.enabled) -}}
{{- end -}}

{{- define "coachforge.kafkaBootstrap" -}}
{{- if .Values.kafka.enabled -}}
{{- printf "%s:9092" (include "coachforge.componentName" (dict "root" . "component" "kafka")) -}}
{{- else -}}
{{- .Values.externalKafka.bootstrapServers -}}
{{- end -}}
{{- end -}}

{{- define "coachforge.engineUrl" -}}
{{- if .Values.engine.enabled -}}
{{- printf "http://%s:%v" (include "coachforge.componentName" (dict "root" . "component" "engine")) .Values.engine.port -}}
{{- else -}}
{{- .Values.engine.externalUrl -}}
{{- end -}}
{{- end -}}

{{- define "coachforge.grpcTarget" -}}
{{- printf "%s:50051" (include "coachforge.componentName" (dict "root" .root "component" .component)) -}}
{{- end -}}

{{- define "coachforge.modelCacheClaim" -}}
{{- .Values.models.cache.existingClaim | default (include "coachforge.componentName" (dict "root" . "component" "models")) -}}
{{- end -}}

{{- define "coachforge.artifactsClaim" -}}
{{- if and (eq .Values.artifacts.type "volume") .Values.artifacts.volume.existingClaim -}}
{{- .Values.artifacts.volume.existingClaim -}}
{{- else -}}
{{- include "coachforge.componentName" (dict "root" . "component" "artifacts") -}}
{{- end -}}
{{- end -}}

{{/* Several base models ------------------------------------------------------------------------- */}}

{{/* A model id as a DNS label: lower case, every run of other characters one "-", none at either end
     ("Qwen2.5-7B_Instruct" -> "qwen2-5-7b-instruct"). */}}
{{- define "coachforge.modelSlug" -}}
{{- regexReplaceAll "[^a-z0-9]+" (lower (toString .)) "-" | trimAll "-" -}}
{{- end -}}

{{/* The base models: models.id (with engine and models.download), then every models.extra entry, whose
     download and engine fields default to models.download's and engine's. Each is a dict {id, source, revision,
     download, engine, main, index (in models.extra; -1 for models.id), slug, name (its engines' StatefulSet and
     headless Service, <fullname>-engine-<slug>, at most 52 characters so that the StatefulSet's
     controller-revision-hash label fits in 63), component (their app.kubernetes.io/component, engine-<slug>),
     readyFile (whose presence says the cache holds it)}.
     Templates get the list as .out.bases: call with (dict "root" $ "out" $out) and discard the output. */}}
{{- define "coachforge.bases" -}}
{{- $root := .root -}}
{{- $m := $root.Values.models -}}
{{- $engineName := include "coachforge.componentName" (dict "root" $root "component" "engine") -}}
{{- $bases := list (dict "id" $m.id "source" $m.source "revision" $m.revision "download" $m.download
      "engine" $root.Values.engine "main" true "index" -1 "slug" (include "coachforge.modelSlug" $m.id)
      "name" $engineName "component" "engine") -}}
{{- range $i, $entry := $m.extra | default list -}}
{{- $download := deepCopy $m.download -}}
{{- range $k, $v := omit ($entry.download | default dict) "hfTokenSecret" -}}
{{- $_ := set $download $k $v -}}
{{- end -}}
{{- range $k, $v := dig "download" "hfTokenSecret" (dict) $entry -}}
{{- $_ := set $download.hfTokenSecret $k $v -}}
{{- end -}}
{{- $engine := deepCopy $root.Values.engine -}}
{{- $over := $entry.engine | default dict -}}
{{- range $k, $v := omit $over "gpu" -}}
{{- $_ := set $engine $k $v -}}
{{- end -}}
{{- range $k, $v := $over.gpu | default dict -}}
{{- $_ := set $engine.gpu $k $v -}}
{{- end -}}
{{- $_ := set $engine "tensorParallelSize" ($over.tensorParallelSize | default $engine.gpu.count) -}}
{{- $slug := include "coachforge.modelSlug" $entry.id -}}
{{- /* Names too long are cut and end with a hash of the id instead, so that long ids stay apart. */ -}}
{{- $hash := $entry.id | toString | sha256sum | trunc 8 -}}
{{- $name := printf "%s-%s" $engineName $slug -}}
{{- if gt (len $name) 52 }}{{ $name = printf "%s-%s" ($name | trunc 43 | trimSuffix "-") $hash }}{{ end -}}
{{- $component := printf "engine-%s" $slug -}}
{{- if gt (len $component) 63 }}{{ $component = printf "%s-%s" ($component | trunc 54 | trimSuffix "-") $hash }}{{ end -}}
{{- $bases = append $bases (dict "id" $entry.id "source" ($entry.source | default "") "revision" ($entry.revision | default "main")
      "download" $download "engine" $engine "main" false "index" $i "slug" $slug "name" $name "component" $component) -}}
{{- end -}}
{{- range $b := $bases -}}
{{- if $b.download.enabled -}}
{{- $_ := set $b "readyFile" (printf "/models/%s/.coachforge-complete" $b.id) -}}
{{- else -}}
{{- $_ := set $b "readyFile" (printf "/models/%s/config.json" $b.id) -}}
{{- end -}}
{{- end -}}
{{- $_ := set .out "bases" $bases -}}
{{- end -}}

{{/* The ready files of every base model, space-separated (what pods that use any base wait for). */}}
{{- define "coachforge.modelReadyFiles" -}}
{{- $out := dict -}}
{{- $_ := include "coachforge.bases" (dict "root" . "out" $out) -}}
{{- $files := list -}}
{{- range $out.bases }}{{- $files = append $files .readyFile }}{{- end -}}
{{- join " " $files -}}
{{- end -}}

{{/* Environment ----------------------------------------------------------------------------------- */}}

{{/* What every CoachForge process reads: platform settings, secrets, the other services' addresses. Paths are
     set only where their volume is mounted ("models", "artifacts": whether the pod mounts them).
     call with (dict "root" $ "component" "dataset" "env" .Values.dataset.env "models" true "artifacts" true) */}}
{{- define "coachforge.env" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- $out := dict -}}
{{- $_ := include "coachforge.bases" (dict "root" $root "out" $out) -}}
{{- /* Rank and adapters per engine are one setting each for every pool: the smallest of the pools'. */ -}}
{{- $rank := int $root.Values.engine.maxLoraRank -}}
{{- $loras := int ($root.Values.engine.maxCpuLoras | default $root.Values.engine.maxLoras) -}}
{{- $ids := list -}}
{{- $pools := dict -}}
{{- range $b := $out.bases -}}
{{- $rank = min $rank (int $b.engine.maxLoraRank) -}}
{{- $loras = min $loras (int ($b.engine.maxCpuLoras | default $b.engine.maxLoras)) -}}
{{- $ids = append $ids $b.id -}}
{{- if not $b.main -}}
{{- $_ := set $pools $b.id (dict "service" (printf "%s:%v" $b.name $root.Values.engine.port)) -}}
{{- end -}}
{{- end -}}
- name: COACHFORGE_LOG_LEVEL
  value: {{ $root.Values.config.logLevel | quote }}
- name: COACHFORGE_LOG_JSON
  value: {{ $root.Values.config.logJson | quote }}
- name: COACHFORGE_DEFAULT_TENANT
  value: {{ $root.Values.config.defaultTenant | quote }}
- name: COACHFORGE_EVENT_PARTITIONS
  value: {{ $root.Values.config.eventPartitions | quote }}
- name: COACHFORGE_KAFKA_DELIVERY_TIMEOUT_MS
  value: {{ $root.Values.config.kafkaDeliveryTimeoutMs | quote }}
{{- with $root.Values.config.grpcMethodConcurrency }}
- name: COACHFORGE_GRPC_METHOD_CONCURRENCY
  value: {{ . | quote }}
{{- end }}
- name: COACHFORGE_GRPC_STREAM_IDLE_TIMEOUT_S
  value: {{ $root.Values.config.grpcStreamIdleTimeoutSeconds | quote }}
- name: COACHFORGE_GRPC_CLIENT_TIMEOUT_S
  value: {{ $root.Values.config.grpcClientTimeoutSeconds | quote }}
- name: COACHFORGE_MAX_REQUEST_BYTES
  value: {{ $root.Values.config.maxRequestBytes | int64 | quote }}
- name: COACHFORGE_INFERENCE_DEFAULT_MAX_REQUESTS_PER_1_MINUTE
  value: {{ $root.Values.config.tenantLimits.requestsPerMinute | int64 | quote }}
- name: COACHFORGE_INFERENCE_DEFAULT_MAX_TOKENS_PER_1_MINUTE
  value: {{ $root.Values.config.tenantLimits.tokensPerMinute | int64 | quote }}
- name: COACHFORGE_INFERENCE_DEFAULT_MAX_TOKENS_PER_1_DAY
  value: {{ $root.Values.config.tenantLimits.tokensPerDay | int64 | quote }}
- name: COACHFORGE_INFERENCE_DEFAULT_MAX_COST_USD_PER_1_DAY
  value: {{ $root.Values.config.tenantLimits.costUsdPerDay | quote }}
- name: COACHFORGE_DATA_DIR
  value: /var/lib/coachforge/data
{{- if .models }}
- name: COACHFORGE_MODELS_DIR
  value: /models
{{- end }}
{{- if .artifacts }}
- name: COACHFORGE_ARTIFACTS_DIR
  value: {{ $root.Values.artifacts.mountPath | quote }}
{{- end }}
{{- include "coachforge.databaseEnv" $root }}
{{- if and (not $root.Values.kafka.enabled) $root.Values.externalKafka.existingSecret }}
- name: COACHFORGE_KAFKA_BOOTSTRAP
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.externalKafka.existingSecret }}
      key: {{ $root.Values.externalKafka.existingSecretKey }}
{{- else }}
- name: COACHFORGE_KAFKA_BOOTSTRAP
  value: {{ include "coachforge.kafkaBootstrap" $root | quote }}
{{- end }}
- name: COACHFORGE_INTERNAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.auth.internalToken.existingSecret | default (include "coachforge.authSecretName" $root) }}
      key: {{ $root.Values.auth.internalToken.key }}
- name: COACHFORGE_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "registry") | quote }}
- name: COACHFORGE_TRAINER_DATASET_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "dataset") | quote }}
- name: COACHFORGE_TRAINER_REGISTRY_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "registry") | quote }}
- name: COACHFORGE_TRAINER_MAX_LORA_RANK
  value: {{ $rank | quote }}
# The worker class the trainer's estimates (dry runs) and presets assume: the workers' GPUs or CPUs.
- name: COACHFORGE_TRAINER_DEVICE_CLASS
  value: {{ ternary "cuda" "cpu" $root.Values.trainerWorker.gpu.enabled | quote }}
# Before a file or dataset version is deleted, the dataset service asks the trainer whether an unfinished job uses
# it; "" (no trainer in this release) turns the check off rather than falling back to the platform's target.
- name: COACHFORGE_DATASET_TRAINER_GRPC_TARGET
  value: {{ ternary (include "coachforge.grpcTarget" (dict "root" $root "component" "trainer")) "" $root.Values.trainer.enabled | quote }}
# Gold dataset versions (stored_completions) read stored chat completions from inference ("" = none).
- name: COACHFORGE_DATASET_INFERENCE_GRPC_TARGET
  value: {{ ternary (include "coachforge.grpcTarget" (dict "root" $root "component" "inference")) "" $root.Values.inference.enabled | quote }}
- name: COACHFORGE_INFERENCE_REGISTRY_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "registry") | quote }}
# Avatar personas with knowledge (inference) and the coach's training principles search knowledge bases
# in the dataset service ("" = none: answered without them).
- name: COACHFORGE_INFERENCE_DATASET_GRPC_TARGET
  value: {{ ternary (include "coachforge.grpcTarget" (dict "root" $root "component" "dataset")) "" $root.Values.dataset.enabled | quote }}
- name: COACHFORGE_COACH_DATASET_GRPC_TARGET
  value: {{ ternary (include "coachforge.grpcTarget" (dict "root" $root "component" "dataset")) "" $root.Values.dataset.enabled | quote }}
- name: COACHFORGE_INFERENCE_ENGINE_URL
  value: {{ include "coachforge.engineUrl" $root | quote }}
{{- if $root.Values.engine.enabled }}
# Every engine pod, from the headless Service's addresses (re-resolved periodically).
- name: COACHFORGE_INFERENCE_ENGINE_SERVICE
  value: {{ printf "%s:%v" (include "coachforge.componentName" (dict "root" $root "component" "engine")) $root.Values.engine.port | quote }}
{{- end }}
{{- with $pools }}
# The engines of each further base model (models.extra), by base model id: their headless Services.
- name: COACHFORGE_INFERENCE_ENGINE_POOLS
  value: {{ toJson . | quote }}
{{- end }}
# Adapters kept loaded per engine before the least recently used is unloaded (its --max-cpu-loras, else --max-loras).
- name: COACHFORGE_INFERENCE_ENGINE_MAX_LORAS
  value: {{ $loras | quote }}
{{- if and (eq $component "inference") .artifacts }}
# Adapters the registry keeps in an object store (s3://…) are downloaded here, on the artifacts
# volume the engines also mount, so an engine can load them by path.
- name: COACHFORGE_INFERENCE_ADAPTER_CACHE_DIR
  value: {{ printf "%s/adapter-cache" $root.Values.artifacts.mountPath | quote }}
{{- end }}
{{- $engineKey := include "coachforge.engineApiKeySecret" $root }}
{{- if and (eq $component "inference") $engineKey }}
# The engines demand this key (VLLM_API_KEY); no other component holds it.
- name: COACHFORGE_INFERENCE_ENGINE_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $engineKey }}
      key: {{ $root.Values.engine.apiKey.key }}
{{- end }}
{{- if and $root.Values.objectStorage.enabled (has $component (list "registry" "inference")) }}
{{- $endpoint := include "coachforge.objectStorageEndpoint" $root }}
{{- if eq $component "registry" }}
# The registry keeps its checksummed copy of every adapter in the bucket.
- name: COACHFORGE_REGISTRY_STORAGE_URL
  value: {{ printf "s3://%s/%s" $root.Values.objectStorage.bucket $root.Values.objectStorage.prefix | trimSuffix "/" | quote }}
{{- with $endpoint }}
- name: COACHFORGE_REGISTRY_STORAGE_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- else }}
# Inference fetches those adapters into its adapter cache.
- name: COACHFORGE_INFERENCE_ADAPTER_STORAGE_OPTIONS
  value: {{ (ternary (dict "endpoint_url" $endpoint) (dict) (ne $endpoint "")) | toJson | quote }}
{{- end }}
{{- include "coachforge.objectStorageEnv" $root }}
{{- end }}
- name: COACHFORGE_COACH_REGISTRY_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "registry") | quote }}
- name: COACHFORGE_COACH_INFERENCE_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "inference") | quote }}
- name: COACHFORGE_EVALUATOR_INFERENCE_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "inference") | quote }}
- name: COACHFORGE_EVALUATOR_REGISTRY_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "registry") | quote }}
# Runs whose items are an uploaded evals file (source file_id) read it from the dataset service ("" = none).
- name: COACHFORGE_EVALUATOR_DATASET_GRPC_TARGET
  value: {{ ternary (include "coachforge.grpcTarget" (dict "root" $root "component" "dataset")) "" $root.Values.dataset.enabled | quote }}
# The experiment view (GET /v1/avatars/{name}/experiment) reads feedback statistics from inference,
# and a retrain policy's trigger counts new gold completions there.
- name: COACHFORGE_REGISTRY_INFERENCE_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "inference") | quote }}
# A retrain (registry) builds its dataset version, runs its job and evaluates it through these.
- name: COACHFORGE_REGISTRY_DATASET_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "dataset") | quote }}
- name: COACHFORGE_REGISTRY_TRAINER_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "trainer") | quote }}
- name: COACHFORGE_REGISTRY_EVALUATOR_GRPC_TARGET
  value: {{ include "coachforge.grpcTarget" (dict "root" $root "component" "evaluator") | quote }}
- name: COACHFORGE_REGISTRY_BASE_MODELS
  value: {{ $ids | toJson | quote }}
# The registry refuses adapters the engines would refuse (rank above their --max-lora-rank).
- name: COACHFORGE_REGISTRY_MAX_LORA_RANK
  value: {{ $rank | quote }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- range $name, $value := $root.Values.config.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- range $name, $value := .env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Pod pieces ------------------------------------------------------------------------------------ */}}

{{- define "coachforge.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "coachforge.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{/* An init container that waits until the model cache holds the base models ("files": their ready files;
     default: every base's). call with (dict "root" $ "image" <image values>) */}}
{{- define "coachforge.waitForModel" -}}
{{- $files := .files | default (splitList " " (include "coachforge.modelReadyFiles" .root)) -}}
- name: wait-for-model
  image: {{ include "coachforge.image" . }}
  imagePullPolicy: {{ include "coachforge.pullPolicy" . }}
  command: ["sh", "-c"]
  args:
    - |
      until [ -f {{ join " ] && [ -f " $files }} ]; do
        echo "waiting for {{ join " " $files }}"; sleep 5
      done
  securityContext:
    {{- include "coachforge.containerSecurityContext" .root | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 64Mi}
  volumeMounts:
    - name: models
      mountPath: /models
      readOnly: true
{{- end -}}

{{- define "coachforge.modelsVolume" -}}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "coachforge.modelCacheClaim" . }}
    readOnly: true
{{- end -}}

{{- define "coachforge.artifactsVolume" -}}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ include "coachforge.artifactsClaim" . }}
{{- end -}}

{{/* nodeSelector and tolerations of a GPU workload: its own plus the GPU pool's while gpu.enabled.
     call with the component's values (.Values.engine or .Values.trainerWorker) */}}
{{- define "coachforge.gpuPlacement" -}}
{{- $selector := deepCopy (.nodeSelector | default dict) -}}
{{- $tolerations := .tolerations | default list -}}
{{- if .gpu.enabled -}}
{{- $selector = merge $selector (.gpu.nodeSelector | default dict) -}}
{{- $tolerations = concat $tolerations (.gpu.tolerations | default list) -}}
{{- end -}}
{{- with $selector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Validation: fail early, with the value to fix. ------------------------------------------------- */}}
{{- define "coachforge.validate" -}}
{{- if and .Values.postgresql.enabled .Values.externalDatabase.existingSecret -}}
{{- fail "postgresql.enabled and externalDatabase.existingSecret are both set: choose the bundled PostgreSQL or your own" -}}
{{- end -}}
{{- if not .Values.postgresql.enabled -}}
{{- $_ := required "externalDatabase.existingSecret is required when postgresql.enabled is false (a Secret with the SQLAlchemy URL)" .Values.externalDatabase.existingSecret -}}
{{- end -}}
{{- if and .Values.kafka.enabled (or .Values.externalKafka.bootstrapServers .Values.externalKafka.existingSecret) -}}
{{- fail "kafka.enabled and externalKafka are both set: choose the bundled Kafka or your own" -}}
{{- end -}}
{{- if and (not .Values.kafka.enabled) (not .Values.externalKafka.bootstrapServers) (not .Values.externalKafka.existingSecret) -}}
{{- fail "externalKafka.bootstrapServers or externalKafka.existingSecret is required when kafka.enabled is false" -}}
{{- end -}}
{{- if not (has .Values.artifacts.type (list "volume" "s3")) -}}
{{- fail (printf "artifacts.type must be \"volume\" or \"s3\", not %q" .Values.artifacts.type) -}}
{{- end -}}
{{- if eq .Values.artifacts.type "s3" -}}
{{- $_ := required "artifacts.s3.bucket is required when artifacts.type is s3" .Values.artifacts.s3.bucket -}}
{{- end -}}
{{- if and (not .Values.engine.enabled) .Values.inference.enabled -}}
{{- $_ := required "engine.externalUrl is required when engine.enabled is false" .Values.engine.externalUrl -}}
{{- end -}}
{{- $rank := .Values.trainerWorker.env.COACHFORGE_TRAINER_LORA_R | default 16 | int -}}
{{- if gt $rank (int .Values.engine.maxLoraRank) -}}
{{- fail (printf "trainerWorker.env.COACHFORGE_TRAINER_LORA_R (%d) is above engine.maxLoraRank (%d): the engines could not load the adapters" $rank (int .Values.engine.maxLoraRank)) -}}
{{- end -}}
{{- $out := dict -}}
{{- $_ := include "coachforge.bases" (dict "root" . "out" $out) -}}
{{- if and .Values.models.extra (not .Values.engine.enabled) -}}
{{- fail "models.extra needs engine.enabled: the chart deploys the engines of every further base model" -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $b := $out.bases -}}
{{- if not $b.main -}}
{{- $where := printf "models.extra[%d]" (int $b.index) -}}
{{- if and $b.download.enabled (not $b.source) -}}
{{- fail (printf "%s.source is required (the Hugging Face repository of %s) unless %s.download.enabled is false" $where $b.id $where) -}}
{{- end -}}
{{- $tp := int $b.engine.tensorParallelSize -}}
{{- if and $b.engine.gpu.enabled (gt $tp (int $b.engine.gpu.count)) -}}
{{- fail (printf "%s.engine.tensorParallelSize (%d) is above its gpu.count (%d)" $where $tp (int $b.engine.gpu.count)) -}}
{{- end -}}
{{- if gt $rank (int $b.engine.maxLoraRank) -}}
{{- fail (printf "trainerWorker.env.COACHFORGE_TRAINER_LORA_R (%d) is above %s.engine.maxLoraRank (%d): the engines of %s could not load the adapters" $rank $where (int $b.engine.maxLoraRank) $b.id) -}}
{{- end -}}
{{- end -}}
{{- $self := ternary "models.id" (printf "models.extra[%d].id" (int $b.index)) $b.main -}}
{{- with index $seen (printf "id %s" $b.id) -}}
{{- fail (printf "%s and %s are both %q: each base model is listed once" . $self $b.id) -}}
{{- end -}}
{{- range $key := list (printf "name %s" $b.name) (printf "label %s" $b.component) -}}
{{- with index $seen $key -}}
{{- fail (printf "%s and %s (%s) give the same engine %s: ids must differ in more than case and punctuation (engines are named by the id in lower case, every run of other characters than letters and digits as one \"-\")" . $self $b.id $key) -}}
{{- end -}}
{{- end -}}
{{- range $key := list (printf "id %s" $b.id) (printf "name %s" $b.name) (printf "label %s" $b.component) -}}
{{- $_ := set $seen $key (printf "%s (%s)" $self $b.id) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.inference.autoscaling.enabled (gt (int .Values.inference.autoscaling.minReplicas) (int .Values.inference.autoscaling.maxReplicas)) -}}
{{- fail "inference.autoscaling.minReplicas is above maxReplicas" -}}
{{- end -}}
{{- $keda := .Values.trainerWorker.autoscaling -}}
{{- if and .Values.trainerWorker.enabled $keda.enabled -}}
{{- if gt (int $keda.minReplicaCount) (int $keda.maxReplicaCount) -}}
{{- fail "trainerWorker.autoscaling.minReplicaCount is above maxReplicaCount" -}}
{{- end -}}
{{- $_ := required "trainerWorker.autoscaling.prometheusServerAddress is required when trainerWorker.autoscaling.enabled (the Prometheus KEDA asks for the queue)" $keda.prometheusServerAddress -}}
{{- end -}}
{{- if and .Values.externalDatabase.urlFromKeys.enabled .Values.postgresql.enabled -}}
{{- fail "externalDatabase.urlFromKeys.enabled needs postgresql.enabled=false (it reads externalDatabase.existingSecret)" -}}
{{- end -}}
{{- if and .Values.minio.enabled .Values.objectStorage.endpoint -}}
{{- fail "minio.enabled and objectStorage.endpoint are both set: choose the bundled MinIO or your own S3 endpoint" -}}
{{- end -}}
{{- if and (eq .Values.artifacts.type "s3") (not .Values.artifacts.s3.secret.name) (or (not .Values.minio.enabled) .Values.minio.auth.existingSecret) -}}
{{- fail "artifacts.s3.secret.name is required when artifacts.type is s3 (the csi-s3 credentials Secret; the chart writes one only for the bundled MinIO with generated credentials)" -}}
{{- end -}}
{{- end -}}

{{/* The console ---------------------------------------------------------------------------------- */}}

{{/* Path prefix -> service of the REST API, as JSON [[prefix, component], …]: the ingress routes and the
     console's calls use the same table. */}}
{{- define "coachforge.apiRoutes" -}}
{{- list
  (list "/v1/files" "dataset") (list "/v1/datasets" "dataset") (list "/v1/knowledge_bases" "dataset")
  (list "/v1/fine_tuning" "trainer")
  (list "/v1/models" "registry") (list "/v1/avatars" "registry")
  (list "/v1/chat" "inference") (list "/v1/completions" "inference") (list "/v1/usage" "inference")
  (list "/v1/coach" "coach")
  (list "/v1/evals" "evaluator") (list "/v1/comparisons" "evaluator")
  (list "/v1/webhooks" "webhooks") | toJson -}}
{{- end -}}

{{- define "coachforge.consoleSecretName" -}}
{{- .Values.console.secretKey.existingSecret | default (include "coachforge.authSecretName" .) -}}
{{- end -}}

{{/* What the console reads besides coachforge.env: where each API path is served, its session key. */}}
{{- define "coachforge.consoleEnv" -}}
{{- $root := . -}}
{{- $routes := dict -}}
{{- range (include "coachforge.apiRoutes" $root | fromJsonArray) }}
{{- $component := index . 1 }}
{{- if (index $root.Values $component).enabled }}
{{- $_ := set $routes (index . 0) (printf "http://%s:8000" (include "coachforge.componentName" (dict "root" $root "component" $component))) }}
{{- end }}
{{- end }}
# The console calls each API path on the service that serves it (the same table as the ingress).
- name: COACHFORGE_CONSOLE_API_ROUTES
  value: {{ $routes | toJson | quote }}
- name: COACHFORGE_CONSOLE_API_URL
  value: {{ $root.Values.console.apiUrl | default (printf "http://%s:8000" (include "coachforge.componentName" (dict "root" $root "component" "inference"))) | quote }}
- name: COACHFORGE_CONSOLE_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "coachforge.consoleSecretName" $root }}
      key: {{ $root.Values.console.secretKey.key }}
{{- end -}}

{{/* The tenants' remote fine-tuning APIs (trainer.remotes.secretName): the Secret mounted as a folder into the
     trainer, the trainer workers and inference (not with subPath, so that the kubelet brings edits of the Secret
     into running pods; the trainer reads the file again on every use, inference whenever it changed). Include
     them only while a Secret is named. */}}
{{- define "coachforge.trainerRemotesPath" -}}
/etc/coachforge/trainer-remotes
{{- end -}}

{{- define "coachforge.trainerRemotesEnv" -}}
# The openai_compatible backend's remote per tenant (a mounted Secret, read again on every use).
- name: COACHFORGE_TRAINER_REMOTES_FILE
  value: {{ printf "%s/remotes.json" (include "coachforge.trainerRemotesPath" .) | quote }}
{{- end -}}

{{- define "coachforge.inferenceRemotesEnv" -}}
# External models (trained by a remote that offers no download) are served by their remote, with the tenant's key.
- name: COACHFORGE_INFERENCE_REMOTES_FILE
  value: {{ printf "%s/remotes.json" (include "coachforge.trainerRemotesPath" .) | quote }}
{{- end -}}

{{- define "coachforge.trainerRemotesMount" -}}
- name: trainer-remotes
  mountPath: {{ include "coachforge.trainerRemotesPath" . }}
  readOnly: true
{{- end -}}

{{- define "coachforge.trainerRemotesVolume" -}}
- name: trainer-remotes
  secret:
    secretName: {{ .Values.trainer.remotes.secretName }}
    defaultMode: 0440
    items:
      - key: {{ .Values.trainer.remotes.key }}
        path: remotes.json
{{- end -}}
