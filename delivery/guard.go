package delivery

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// ErrForbiddenTarget matches (errors.Is) the error of a dial refused
// because the target resolves to an address webhooks must not reach:
// loopback, private networks, link-local, cloud metadata services, ….
var ErrForbiddenTarget = errors.New("target address is not allowed")

// ForbiddenTargetError names the refused address.
type ForbiddenTargetError struct{ Addr string }

func (e *ForbiddenTargetError) Error() string {
	return "refused to connect to " + e.Addr + ": private or reserved address (allow_private_targets permits it)"
}

// Is makes errors.Is(err, ErrForbiddenTarget) true.
func (e *ForbiddenTargetError) Is(target error) bool { return target == ErrForbiddenTarget }

// blockedPrefixes are ranges beyond what netip's predicates cover.
var blockedPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),         // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),     // carrier-grade NAT (Alibaba metadata 100.100.100.200)
	netip.MustParsePrefix("192.0.0.0/24"),      // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),      // documentation (TEST-NET-1)
	netip.MustParsePrefix("198.18.0.0/15"),     // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"),   // documentation (TEST-NET-2)
	netip.MustParsePrefix("203.0.113.0/24"),    // documentation (TEST-NET-3)
	netip.MustParsePrefix("240.0.0.0/4"),       // reserved, broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"),    // local-use NAT64
	netip.MustParsePrefix("100::/64"),          // discard-only
	netip.MustParsePrefix("2001:2::/48"),       // benchmarking
	netip.MustParsePrefix("2001:10::/28"),      // ORCHID, not routable
	netip.MustParsePrefix("2001:20::/28"),      // ORCHIDv2, not routable
	netip.MustParsePrefix("2001:db8::/32"),     // documentation
	netip.MustParsePrefix("fec0::/10"),         // site-local, deprecated yet still private where used
	netip.MustParsePrefix("fd00:ec2::254/128"), // AWS metadata over IPv6 (also in fc00::/7)
}

// IPv6 ranges whose addresses carry an IPv4 address a relay or translator
// forwards to: a target there is judged by that IPv4 address, so that,
// say, 64:ff9b::7f00:1 is loopback as 127.0.0.1 is.
var (
	nat64        = netip.MustParsePrefix("64:ff9b::/96") // RFC 6052: the last 32 bits
	sixToFour    = netip.MustParsePrefix("2002::/16")    // RFC 3056: bits 16–47
	teredo       = netip.MustParsePrefix("2001::/32")    // RFC 4380: server in bits 32–63, client inverted in the last 32
	v4Compatible = netip.MustParsePrefix("::/96")        // RFC 4291's deprecated ::a.b.c.d
)

// ForbiddenAddr reports whether a delivery must not connect to addr.
func ForbiddenAddr(addr netip.Addr) bool {
	addr = addr.Unmap()
	if embedded := embeddedIPv4(addr); len(embedded) > 0 {
		for _, v4 := range embedded {
			if ForbiddenAddr(v4) {
				return true
			}
		}
		return false
	}
	if addr.IsLoopback() || addr.IsPrivate() || addr.IsUnspecified() ||
		addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast() ||
		addr.IsInterfaceLocalMulticast() || addr.IsMulticast() {
		return true
	}
	for _, p := range blockedPrefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// embeddedIPv4 returns the IPv4 addresses an IPv6 address leads to
// through a translator or tunnel, none for any other address.
func embeddedIPv4(addr netip.Addr) []netip.Addr {
	if !addr.Is6() {
		return nil
	}
	b := addr.As16()
	v4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte(b[i : i+4])) }
	switch {
	case nat64.Contains(addr):
		return []netip.Addr{v4(12)}
	case sixToFour.Contains(addr):
		return []netip.Addr{v4(2)}
	case teredo.Contains(addr):
		client := [4]byte(b[12:16])
		for i := range client {
			client[i] ^= 0xff
		}
		return []netip.Addr{v4(4), netip.AddrFrom4(client)}
	case v4Compatible.Contains(addr) && addr != netip.IPv6Unspecified() && addr != netip.IPv6Loopback():
		return []netip.Addr{v4(12)}
	}
	return nil
}

// guardedDialer connects only to allowed addresses. The check runs on the
// address actually dialled, after DNS resolution, so a name that resolves
// (or re-resolves) to a private address is caught.
func guardedDialer(allowPrivate bool, timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	if !allowPrivate {
		d.Control = func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil || ForbiddenAddr(ap.Addr()) {
				return &ForbiddenTargetError{Addr: address}
			}
			return nil
		}
	}
	return d
}
