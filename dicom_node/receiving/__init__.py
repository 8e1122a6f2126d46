"""Receiving: the C-STORE/C-ECHO SCP, the spool, series completion, admission checks and DICOM over TLS
(whose client side the sender and the destination checks use too)."""
