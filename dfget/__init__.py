"""dfget: download a URL through the swarm; dfdaemon and dftop live here too (issues #4-#6)."""
