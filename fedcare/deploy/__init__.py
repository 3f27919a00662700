"""Running fedcare as separate processes: certificates, SuperLink and SuperNode launchers."""
