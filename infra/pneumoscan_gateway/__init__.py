"""The DICOM gateway (`pneumoscan gateway`): a storage SCP beside the PACS, uploading what it
receives under the incoming prefix and sending the structured reports back to the PACS.

It runs inside the hospital network with only outbound HTTPS to AWS. Modules: `spool` (what is
in flight, on disk), `counters` (what `pneumoscan gateway status` shows), `storage` (the
storage SCP and its upload), `returns` (the structured reports' way back). It never imports
the Lambda handler.
"""
