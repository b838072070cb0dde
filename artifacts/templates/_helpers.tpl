{{- /*
tagger.certs is the serving certificate as YAML {cert, key, ca} (PEM):
the one given (mode provided), the one stored in the Secret by an earlier
install (mode generate: so the caBundle never changes on upgrade), or a new
CA and certificate. Empty for cert-manager, which writes the Secret itself.
*/ -}}
{{- define "tagger.certs" -}}
{{- $c := .Values.certificate -}}
{{- $ns := .Release.Namespace -}}
{{- if eq $c.mode "provided" -}}
{{- if not (and $c.cert $c.key $c.ca) }}{{ fail "certificate.mode=provided needs certificate.cert, certificate.key and certificate.ca (e.g. --set-file certificate.cert=tls.crt)" }}{{ end -}}
cert: {{ $c.cert | quote }}
key: {{ $c.key | quote }}
ca: {{ $c.ca | quote }}
{{- else if eq $c.mode "generate" -}}
{{- $s := lookup "v1" "Secret" $ns "tagger-apiserver-serving-cert" -}}
{{- if and $s $s.data (index $s.data "ca.crt") (index $s.data "tls.crt") (index $s.data "tls.key") -}}
cert: {{ index $s.data "tls.crt" | b64dec | quote }}
key: {{ index $s.data "tls.key" | b64dec | quote }}
ca: {{ index $s.data "ca.crt" | b64dec | quote }}
{{- else -}}
{{- $svc := printf "tagger-apiserver.%s.svc" $ns -}}
{{- $ca := genCA "tagger-ca" (int $c.validityDays) -}}
{{- $cert := genSignedCert $svc nil (list $svc (printf "%s.cluster.local" $svc)) (int $c.validityDays) $ca -}}
cert: {{ $cert.Cert | quote }}
key: {{ $cert.Key | quote }}
ca: {{ $ca.Cert | quote }}
{{- end -}}
{{- else if eq $c.mode "cert-manager" -}}
{{- if not $c.certManager.issuerRef.name }}{{ fail "certificate.mode=cert-manager needs certificate.certManager.issuerRef.name" }}{{ end -}}
cert: ""
key: ""
ca: ""
{{- else -}}
{{- fail (printf "certificate.mode is %q: one of generate, provided, cert-manager" $c.mode) -}}
{{- end -}}
{{- end -}}
