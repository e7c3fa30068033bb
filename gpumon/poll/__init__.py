"""Reading the fleet: one Report per server over SSH (or OFF with the reason)."""
