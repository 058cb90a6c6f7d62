"""Notifications: telling people what the appliance found, by e-mail and by webhook.

The premier promise ("if we find that a file(s) has not been backed up, we will notify you by
email with a list of those files") and the morning-after questions (did last night's backups
run, is the disk filling up, is the data center getting the data) reach an administrator's
mailbox instead of waiting on the page.

The modules, one job each:

* `settings`: the ``[notify]`` section of the appliance's TOML (targets, classes, timings),
  and the secrets read from 0600 files;
* `targets`: the targets added on the page (a table in the index, secrets in 0600 files),
  merged after the TOML's each tick;
* `events`: what an event is (its class, its group, its payload) and the classes;
* `outbox`: the durable queue in the index (`Index.own_tables`): events, messages per
  target, what was seen and which conditions are raised;
* `messages`: subject, plain-text and HTML parts, CSV attachment (the standard library's
  `email`), and the webhook's JSON body;
* `compose`: events grouped into messages, with per-class throttles;
* `transport`: SMTP (smtplib, in the daemon's pool) and the HMAC-signed webhook (aiohttp);
* `sender`: delivery with back-off, undeliverable after the give-up time;
* `sources`: where events come from (backup runs, the appliance summary's conditions, the
  daily digest and the monthly report);
* `service`: the daemon's loop tying them together, the test message, the log;
* `metrics`: sent, failed, queued and undeliverable for /metrics.
"""
