"""Webhook addresses every test of refusals goes through: each non-global form, spelled
every way a client could be made to reach it."""

REFUSED = ["127.0.0.1", "localhost", "10.0.0.1", "172.16.0.1", "192.168.1.1",
           "169.254.169.254", "0.0.0.0", "[::1]", "[::]", "[::ffff:127.0.0.1]",
           "[::ffff:169.254.169.254]", "[fe80::1]", "[fc00::1]", "100.64.0.1",
           "0x7f000001", "2130706433", "0177.0.0.1", "127.1", "0", "224.0.0.1",
           "[ff02::1]", "255.255.255.255", "240.0.0.1", "[2002:7f00:1::]",
           "[64:ff9b::a9fe:a9fe]", "[::127.0.0.1]", "[fec0::1]"]
