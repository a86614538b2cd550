{{/* Base name of every object: the release name when it contains the chart name. */}}
{{- define "csi-py.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "csi-py.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "csi-py.labels" -}}
app.kubernetes.io/part-of: csi-py
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "csi-py.selectorLabels" -}}
app.kubernetes.io/name: {{ include "csi-py.name" . }}
app.kubernetes.io/component: node
{{- end -}}

{{/* The node plugin's ServiceAccount, shared by the driver and its sidecars. */}}
{{- define "csi-py.serviceAccount" -}}
{{- printf "%s-node" (include "csi-py.fullname" .) -}}
{{- end -}}

{{/* Host directory of the driver's socket, and the socket path kubelet dials. */}}
{{- define "csi-py.socketDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driver.name -}}
{{- end -}}

{{- define "csi-py.registrationPath" -}}
{{- printf "%s/csi.sock" (include "csi-py.socketDir" .) -}}
{{- end -}}

{{/*
An image reference: (dict "image" <repository, tag> "root" $). With global.imageRegistry
or imageRegistry set, that registry replaces the image's own registry host (the first
path part when it has a "." or ":"), or is put in front of a bare name.
*/}}
{{- define "csi-py.image" -}}
{{- $root := .root -}}
{{- $registry := trimSuffix "/" (default $root.Values.imageRegistry ($root.Values.global).imageRegistry) -}}
{{- $repo := .image.repository -}}
{{- if $registry -}}
{{- $parts := splitList "/" $repo -}}
{{- if and (gt (len $parts) 1) (or (contains "." (first $parts)) (contains ":" (first $parts)) (eq (first $parts) "localhost")) -}}
{{- $repo = join "/" (rest $parts) -}}
{{- end -}}
{{- $repo = printf "%s/%s" $registry $repo -}}
{{- end -}}
{{- printf "%s:%s" $repo (default $root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* A sidecar's resources: its own, else the shared sidecars.resources. */}}
{{- define "csi-py.sidecarResources" -}}
{{- toYaml (default .root.Values.sidecars.resources .sidecar.resources) -}}
{{- end -}}

{{/* Which sidecars run, by layout. */}}
{{- define "csi-py.distributed" -}}
{{- if eq .Values.layout "distributed" }}true{{ end -}}
{{- end -}}

{{- define "csi-py.attacher" -}}
{{- if not (include "csi-py.distributed" .) }}true{{ end -}}
{{- end -}}

{{- define "csi-py.resizer" -}}
{{- if or (not (include "csi-py.distributed" .)) .Values.distributed.resizer.enabled }}true{{ end -}}
{{- end -}}

{{- define "csi-py.leaderElection" -}}
{{- if not (include "csi-py.distributed" .) }}true{{ end -}}
{{- end -}}

{{/* The sidecars connect to the driver's owner-only (0600, root) socket as root. */}}
{{- define "csi-py.sidecarSecurityContext" -}}
{{- toYaml .Values.sidecars.securityContext -}}
{{- end -}}

{{- define "csi-py.socketMount" -}}
- name: socket-dir
  mountPath: /csi
{{- end -}}

{{- define "csi-py.envNamespace" -}}
- name: NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{- define "csi-py.envNodeName" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end -}}

{{/*
A sidecar's --http-endpoint port, and for one that elects a leader a liveness probe on
/healthz/leader-election (it fails while the replica cannot renew or take its lease):
(dict "name" <port name> "port" <number> "leader" <bool>).
*/}}
{{- define "csi-py.sidecarHttp" -}}
ports:
  - name: {{ .name }}
    containerPort: {{ .port }}
    protocol: TCP
{{- if .leader }}
livenessProbe:
  httpGet:
    path: /healthz/leader-election
    port: {{ .name }}
  initialDelaySeconds: 10
  timeoutSeconds: 10
  periodSeconds: 20
  failureThreshold: 3
{{- end }}
{{- end -}}
