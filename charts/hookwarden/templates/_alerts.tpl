{{/*
hookwarden's alert rules: the `groups` of a Prometheus rule file. Rendered into the
PrometheusRule (metrics.prometheusRule) and, by scripts/render-monitoring.sh, into the plain
rule file manifests/monitoring/prometheus-rules.yaml that `promtool test rules` tests
(tests/monitoring). Every alert says what to do; README "Runbook" has the longer story.
*/}}
{{- define "hookwarden.alertGroups" -}}
{{- $r := .Values.metrics.prometheusRule -}}
{{- $job := $r.receiverJob | default (printf "%s-metrics" (include "hookwarden.receiver.fullname" .)) -}}
{{- $labels := $r.alertLabels -}}
groups:
  - name: hookwarden.integrations
    rules:
      - alert: HookwardenAuthFailures
        expr: |
          sum by (namespace, integration) (rate(hookwarden_integration_rejects_total{reason=~"signature_mismatch|token_mismatch|body_hash_mismatch|missing_signature|invalid_secret"}[10m]))
            / sum by (namespace, integration) (rate(hookwarden_integration_deliveries_total[10m]))
            > {{ $r.authFailureRatio }}
        for: {{ $r.for.authFailures }}
        labels:
          severity: warning
          {{- with $labels }}{{ toYaml . | nindent 10 }}{{- end }}
        annotations:
          summary: "Webhooks of {{`{{ $labels.namespace }}/{{ $labels.integration }}`}} fail authentication"
          description: "{{`{{ $value | humanizePercentage }}`}} of the requests to WebhookIntegration {{`{{ $labels.namespace }}/{{ $labels.integration }}`}} were refused for a wrong or missing signature or token over 10 minutes: the sender's secret probably differs from the integration's. Compare the secret configured at the sender with the one the integration's Secret holds (kubectl get whi -n {{`{{ $labels.namespace }}`}} {{`{{ $labels.integration }}`}} -o yaml: spec.secretRef, or status.secretName when hookwarden generated it), and read status.lastRejectReason."
      - alert: HookwardenIntegrationSilent
        expr: |
          time() - max by (namespace, integration) (hookwarden_integration_last_delivery_timestamp_seconds or hookwarden_integration_served_since_timestamp_seconds)
            > on (namespace, integration) max by (namespace, integration) (hookwarden_integration_expected_interval_seconds)
        for: {{ $r.for.silent }}
        labels:
          severity: warning
          {{- with $labels }}{{ toYaml . | nindent 10 }}{{- end }}
        annotations:
          summary: "No webhook for {{`{{ $labels.namespace }}/{{ $labels.integration }}`}} within its expected interval"
          description: "WebhookIntegration {{`{{ $labels.namespace }}/{{ $labels.integration }}`}} has received no delivery for {{`{{ $value | humanizeDuration }}`}}, longer than its hookwarden.dev/expected-interval annotation. Check that the sender still has the webhook configured and enabled and that it reaches the endpoint (its delivery log, status.url, your ingress); hookwarden_integration_rejects_total shows whether requests arrive but are refused."
  - name: hookwarden.receiver
    rules:
      - alert: HookwardenJournalNearFull
        expr: |
          hookwarden_journal_bytes / hookwarden_journal_limit_bytes > {{ $r.journalFullRatio }}
        for: {{ $r.for.journalNearFull }}
        labels:
          severity: warning
          {{- with $labels }}{{ toYaml . | nindent 10 }}{{- end }}
        annotations:
          summary: "Receiver journal {{`{{ $value | humanizePercentage }}`}} full"
          description: "The delivery journal of {{`{{ $labels.instance }}`}} uses {{`{{ $value | humanizePercentage }}`}} of --journal-max-bytes; at the cap new deliveries are answered 503. Status writes are behind (check hookwarden_receiver_status_writes_total{outcome!=\"ok\"} and the receiver's API access) or forwards are piling up (hookwarden_forward_pending, dead letters). Fix the cause, or raise receiver.journal.maxBytes with a larger volume."
      - alert: HookwardenJournalFsyncFailed
        expr: |
          increase(hookwarden_journal_fsync_failures_total[10m]) > 0
        for: {{ $r.for.fsyncFailures }}
        labels:
          severity: critical
          {{- with $labels }}{{ toYaml . | nindent 10 }}{{- end }}
        annotations:
          summary: "Receiver journal fsync failed on {{`{{ $labels.instance }}`}}"
          description: "An fsync of the delivery journal failed on {{`{{ $labels.instance }}`}}: the volume is full (appends answer 503 until space is freed) or the disk reported an I/O error (the journal refuses writes until the receiver reopens it). Read the receiver's log for 'journal fsync', check the volume's free space and the node's kernel log; replace the volume if it reports I/O errors."
      - alert: HookwardenBudgetSheds
        expr: |
          sum by (instance) (rate(hookwarden_receiver_rejects_total{reason=~"over_budget|too_many_connections|overloaded"}[5m])) > 0
        for: {{ $r.for.budgetSheds }}
        labels:
          severity: warning
          {{- with $labels }}{{ toYaml . | nindent 10 }}{{- end }}
        annotations:
          summary: "Receiver {{`{{ $labels.instance }}`}} sheds webhook requests"
          description: "{{`{{ $labels.instance }}`}} answers {{`{{ printf \"%.2f\" $value }}`}} requests/s with 503 because its body budget, connection limit or status queue is exhausted (senders retry, but deliveries are delayed). Add receiver replicas, raise receiver.maxBodyBytesInFlight / maxConnections with memory, or find the integration flooding it (hookwarden_integration_rejects_total by reason)."
      - alert: HookwardenReceiverDown
        expr: |
          up{job="{{ $job }}"} == 0 or absent(up{job="{{ $job }}"} == 1)
        for: {{ $r.for.receiverDown }}
        labels:
          severity: critical
          {{- with $labels }}{{ toYaml . | nindent 10 }}{{- end }}
        annotations:
          summary: "A hookwarden receiver cannot be scraped"
          description: "Prometheus cannot scrape {{`{{ with $labels.instance }}{{ . }}{{ else }}any receiver{{ end }}`}} (job {{ $job }}); with no receiver up, webhooks are not answered. kubectl get pods -l app.kubernetes.io/component=receiver, then describe the failing pod and read its log (journal volume, readiness: routes synced)."
  - name: hookwarden.forwarding
    rules:
      - alert: HookwardenDeadLettersGrowing
        expr: |
          sum by (namespace, integration, target) (delta(hookwarden_forward_dead_letters[15m])) > 0
        for: {{ $r.for.deadLetters }}
        labels:
          severity: warning
          {{- with $labels }}{{ toYaml . | nindent 10 }}{{- end }}
        annotations:
          summary: "Forwards of {{`{{ $labels.namespace }}/{{ $labels.integration }}`}} to {{`{{ $labels.target }}`}} are dead-lettered"
          description: "Dead letters of target {{`{{ $labels.target }}`}} of WebhookIntegration {{`{{ $labels.namespace }}/{{ $labels.integration }}`}} keep growing: the target refuses them for good (4xx) or they ran out of attempts. Read status.forwarding and the ForwardDeadLettered Events (kubectl describe whi -n {{`{{ $labels.namespace }}`}} {{`{{ $labels.integration }}`}}), fix the target, then replay: kubectl annotate whi -n {{`{{ $labels.namespace }}`}} {{`{{ $labels.integration }}`}} hookwarden.dev/replay=$(date +%s) --overwrite."
      - alert: HookwardenForwardCircuitOpen
        expr: |
          max by (namespace, integration, target) (hookwarden_forward_circuit_open) == 1
        for: {{ $r.for.circuitOpen }}
        labels:
          severity: warning
          {{- with $labels }}{{ toYaml . | nindent 10 }}{{- end }}
        annotations:
          summary: "Forward target {{`{{ $labels.target }}`}} of {{`{{ $labels.namespace }}/{{ $labels.integration }}`}} is unreachable"
          description: "The circuit breaker of target {{`{{ $labels.target }}`}} is open: its recent attempts failed (timeouts, connection errors, 5xx) and forwards wait (hookwarden_forward_pending). Check that the target is up and reachable from the receivers (egress policy, NetworkPolicy, DNS); forwards resume by themselves once a probe succeeds."
  - name: hookwarden.controller
    rules:
      - alert: HookwardenReconcileErrors
        expr: |
          sum by (error) (rate(hookwarden_controller_reconcile_errors_total[5m])) > 0
        for: {{ $r.for.reconcileErrors }}
        labels:
          severity: warning
          {{- with $labels }}{{ toYaml . | nindent 10 }}{{- end }}
        annotations:
          summary: "hookwarden reconciles fail at step {{`{{ $labels.error }}`}}"
          description: "Reconciles keep failing at step {{`{{ $labels.error }}`}} ({{`{{ printf \"%.3f\" $value }}`}}/s): integrations' routes and status are not updated. Read the controller's log and the integrations' Events (kubectl get events --field-selector reason!=RouteWritten -A); API server errors and missing RBAC are the usual causes."
{{- end -}}
