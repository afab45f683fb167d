"""Transport metadata carried in message headers (domain data stays in the body)."""

CORRELATION_ID = "Praxis-Correlation-Id"
CAUSATION_ID = "Praxis-Causation-Id"
ERROR = "Praxis-Error"
DEAD_LETTER_REASON = "Praxis-Dead-Letter-Reason"
DEAD_LETTER_SUBJECT = "Praxis-Dead-Letter-Subject"
MSG_ID = "Nats-Msg-Id"
