{{/* Chart name. */}}
{{- define "casserole.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, prefixed with the chart name unless it already contains it. */}}
{{- define "casserole.fullname" -}}
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

{{/* Name of the operator's objects. */}}
{{- define "casserole.operator.fullname" -}}
{{- printf "%s-operator" (include "casserole.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "casserole.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object of the release. */}}
{{- define "casserole.labels" -}}
helm.sh/chart: {{ include "casserole.chart" . }}
app.kubernetes.io/part-of: casserole
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of the operator pods (never change: Deployment selectors are immutable). */}}
{{- define "casserole.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "casserole.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "casserole.operator.labels" -}}
{{ include "casserole.labels" . }}
{{ include "casserole.operator.selectorLabels" . }}
{{- end -}}

{{- define "casserole.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "casserole.operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: repository@digest when a digest is given, else repository:tag. */}}
{{- define "casserole.operator.image" -}}
{{- $img := .Values.operator.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* The cache node image given to the CasseroleCaches of `caches:`. */}}
{{- define "casserole.node.image" -}}
{{- printf "%s:%s" .Values.node.image.repository (default .Chart.AppVersion .Values.node.image.tag) -}}
{{- end -}}

{{/*
The namespaces whose Secrets the operator may use, comma-separated, or "*" for every namespace.
The watched namespace when there is one; "*" only with rbac.clusterWideSecrets; otherwise the
release namespace, rbac.secretNamespaces and the namespaces of the chart's own caches:
Kubernetes RBAC cannot grant "only the Secrets with this label", so a cluster-wide grant would
reach every Secret of the cluster.
*/}}
{{- define "casserole.secretNamespaces" -}}
{{- if .Values.operator.watchNamespace -}}
{{- .Values.operator.watchNamespace -}}
{{- else if .Values.rbac.clusterWideSecrets -}}
*
{{- else -}}
{{- $namespaces := list .Release.Namespace -}}
{{- range .Values.rbac.secretNamespaces }}{{ $namespaces = append $namespaces . }}{{ end -}}
{{- range .Values.caches }}{{ $namespaces = append $namespaces (default $.Release.Namespace .namespace) }}{{ end -}}
{{- $namespaces | uniq | join "," -}}
{{- end -}}
{{- end -}}
