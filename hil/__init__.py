"""Hardware-in-the-loop harness: a virtual rig or a real appliance."""
