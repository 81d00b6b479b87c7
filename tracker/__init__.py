"""dftracker: the HTTP announce tracker that stands in for Dragonfly's supernode (issue #3)."""
