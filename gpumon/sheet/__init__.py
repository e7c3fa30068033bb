"""The sheet: read its layout, plan the status cells, write them in one request."""
