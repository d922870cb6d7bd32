"""The staff account ``manage.py seed`` creates, for the local demo only.

The tour logs in with it to see what staff see on /replicas/ (hosts, reasons
and errors). Imports nothing, so tour_client.py can read it without Django.
"""

STAFF_USERNAME = "staff"
STAFF_PASSWORD = "bookshop"
