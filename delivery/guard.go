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
	netip.MustParsePrefix("198.18.0.0/15"),     // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),       // reserved, broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"),    // local-use NAT64
	netip.MustParsePrefix("2001:db8::/32"),     // documentation
	netip.MustParsePrefix("fd00:ec2::254/128"), // AWS metadata over IPv6 (also in fc00::/7)
}

var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// ForbiddenAddr reports whether a delivery must not connect to addr.
func ForbiddenAddr(addr netip.Addr) bool {
	addr = addr.Unmap()
	if nat64.Contains(addr) {
		// NAT64 embeds an IPv4 address in the last 32 bits.
		b := addr.As16()
		return ForbiddenAddr(netip.AddrFrom4([4]byte(b[12:])))
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
