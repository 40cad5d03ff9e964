"""Messaging channels: Telegram, Slack, WhatsApp Cloud and Twilio (SMS and WhatsApp).

A channel endpoint (``endpoints``) belongs to a tenant and holds one bot's credentials.
The platform's webhook arrives at the API, is verified and parsed by the platform's
module (``telegram``, ``slack``, ``whatsapp``, ``twilio``) and accepted as a turn of the
chat's session; the commit's outbox message becomes replies on the session's reply lane
(``lane``), which a worker sends back through the platform's API, in order, paced.
"""
