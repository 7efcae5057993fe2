"""Job-end webhooks: where a callback may go (`target`), how it is signed (`signing`), the POST
itself (`post`) and the loop that sends, retries and records each attempt (`sender`)."""

from control.webhooks.sender import WebhookSender
from control.webhooks.signing import sign

__all__ = ["WebhookSender", "sign"]
