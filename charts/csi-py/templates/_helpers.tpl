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

{{- define "csi-py.image" -}}
{{- printf "%s:%s" .repository .tag -}}
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
runAsUser: 0
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
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
