"""The psyduck farm: a coordinator, its scheduler, and the hosts it drives."""
