"""Receiving: the C-STORE/C-ECHO SCP, the spool, series completion and admission checks."""
