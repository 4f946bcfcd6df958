{{/* vim: set filetype=mustache: */}}

{{/*
The chart's name, or nameOverride: the app.kubernetes.io/name label.
*/}}
{{- define "hubbub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's objects' name. We truncate at 63 chars because some Kubernetes name fields are
limited to this (by the DNS naming spec). If the release name contains the chart name it is used
as the full name.
*/}}
{{- define "hubbub.fullname" -}}
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

{{/*
The helm.sh/chart label: name and version ("+" is not allowed in a label value).
*/}}
{{- define "hubbub.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The standard labels of every object the chart renders.
*/}}
{{- define "hubbub.labels" -}}
helm.sh/chart: {{ include "hubbub.chart" . }}
app.kubernetes.io/name: {{ include "hubbub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hubbub
{{- end }}

{{/*
The operator's Deployment and pods: the standard labels and their component.
*/}}
{{- define "hubbub.operatorLabels" -}}
{{ include "hubbub.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The labels that select the operator's pods: they must never change once installed (a Deployment's
selector is immutable), so only name, instance and component.
*/}}
{{- define "hubbub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hubbub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "hubbub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hubbub.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The namespace of the operator and its namespaced objects.
*/}}
{{- define "hubbub.namespace" -}}
{{- .Release.Namespace }}
{{- end }}

{{/*
The image: repository:tag, the tag defaulting to the chart's appVersion (hubbub's version).
*/}}
{{- define "hubbub.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The namespaces a single-namespace operator watches: operator.namespaces, or the release's.
*/}}
{{- define "hubbub.watchedNamespaces" -}}
{{- if .Values.operator.namespaces }}
{{- toYaml .Values.operator.namespaces }}
{{- else }}
{{- toYaml (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/*
"true" when RealtimeServices can be created in this release: their kind is served already, or the
release does not install their CRD (crds.install=false: it must exist before the release, so it is
served when Helm installs; `helm template` and `skaffold render` then render them without
`--api-versions`). Empty otherwise: the release that installs the CRD cannot create them.
*/}}
{{- define "hubbub.realtimeServicesServed" -}}
{{- if or (.Capabilities.APIVersions.Has "hubbub.dev/v1alpha1/RealtimeService") (not .Values.crds.install) }}true{{ end }}
{{- end }}
