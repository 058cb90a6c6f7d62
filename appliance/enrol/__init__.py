"""Enrolling hosts: one-time enrolment codes exchanged for a host's token (`codes.py`), the
agent's installer and wheelhouse the appliance serves (`installer.py`), the host reports
agents send (`reports.py`) and restore time objectives (`rto.py`). Owns the tables
`enrol_codes`, `enrolments`, `host_reports` and `host_rto` (`Index.own_tables`)."""
