"""Alerts: tell the lab when a server goes down or comes back, when the agent warns of overload,
and of GPU misuse — once per transition, grouped per push, through a webhook and e-mail.

``conditions`` (the transitions, pure), ``observe`` (a push's results as conditions, pure),
``gpus`` (the GPU records the GPU events are judged from), ``message`` (one message per
addressee, pure), ``state`` (the SQLite tables that keep it all across pushes), ``channels``
(webhook and SMTP, bounded in time, secrets kept out of every line), ``engine`` (one push's
alerts: step, queue, deliver). docs/alerts.md.
"""
