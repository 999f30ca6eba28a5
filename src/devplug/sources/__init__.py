"""What produces events: udev netlink (``udev``), host paths (``hostpath``), rules files
(``rulefiles``). Each turns the outside world into core records; none imports another
front door (kubelet, ops)."""
