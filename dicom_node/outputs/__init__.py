"""Outputs: the derived DICOM objects (SEG; room for SR, overlay, RTSTRUCT), their validation, the outbox
and the C-STORE SCU."""
