package delivery

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestForbiddenAddr(t *testing.T) {
	forbidden := []string{
		"127.0.0.1", "127.8.9.10", "::1", // loopback
		"10.0.0.1", "172.16.5.4", "192.168.1.1", "fc00::1", "fd12:3456::1", // private
		"169.254.169.254", "169.254.1.1", "fe80::1", // link-local, AWS/GCP/Azure metadata
		"0.0.0.0", "::", "0.1.2.3", // unspecified, "this network"
		"100.100.100.200", "100.64.0.1", // CGNAT, Alibaba metadata
		"fd00:ec2::254",                                                 // AWS metadata over IPv6
		"::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", // v4-mapped
		"64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", // NAT64 of metadata and loopback
		"224.0.0.1", "ff02::1", "255.255.255.255", "240.0.0.1",
		"2002:7f00:1::1", "2002:a9fe:a9fe::", "2002:a00:1::5", // 6to4 of loopback, metadata, private
		"2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo, client 127.0.0.1 (inverted)
		"2001:0:a00:1:8000:63bf:f7f7:f7f7",     // Teredo through a private server
		"::7f00:1", "::a9fe:a9fe", "::2",       // IPv4-compatible loopback, metadata, "this network"
		"192.0.2.1", "198.51.100.7", "203.0.113.9", // documentation, used as private space
		"100::1", "2001:2::1", "2001:10::1", "2001:20::1", "fec0::1", // discard, benchmarking, ORCHID, site-local
	}
	for _, a := range forbidden {
		if !ForbiddenAddr(netip.MustParseAddr(a)) {
			t.Errorf("%s is allowed", a)
		}
	}
	allowed := []string{"93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:8.8.8.8", "64:ff9b::808:808", "172.32.0.1", "100.128.0.1",
		"2002:808:808::1",                      // 6to4 of 8.8.8.8
		"2001:0:4136:e378:8000:63bf:f7f7:f7f7", // Teredo, public server, client 8.8.8.8
		"::808:808",                            // IPv4-compatible 8.8.8.8
		"2001:4860::8888",                      // outside Teredo's 2001::/32
	}
	for _, a := range allowed {
		if ForbiddenAddr(netip.MustParseAddr(a)) {
			t.Errorf("%s is refused", a)
		}
	}
}

// With the guard on (the default), a target on loopback is refused at dial
// time, whatever name it is reached by, and the attempt records why.
func TestGuardRefusesLoopbackTargets(t *testing.T) {
	rcv := newReceiver(t, nil)
	port := rcv.URL[strings.LastIndex(rcv.URL, ":")+1:]
	for _, target := range []string{rcv.URL, "http://localhost:" + port, "http://[::ffff:127.0.0.1]:" + port} {
		t.Run(target, func(t *testing.T) {
			te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour}, Subscriptions: []Subscription{sub("s", target)}})
			// Turn the guard back on (newTestEngine allows private targets).
			cfg := te.settings.Load().Config
			cfg.AllowPrivateTargets = false
			if err := te.Configure(cfg); err != nil {
				t.Fatal(err)
			}
			res, _ := te.Publish(msg("x", `{}`))
			did := deliveryID(res.ID, StaticID("s"))
			eventually(t, "the refused attempt", func() bool { return te.delivery(t, did).Attempts == 1 })
			d := te.delivery(t, did)
			if !strings.Contains(d.LastError, "private or reserved address") || d.State != StatePending {
				t.Fatalf("delivery %+v", d)
			}
		})
	}
	if n := len(rcv.got()); n != 0 {
		t.Fatalf("the guarded receiver got %d requests", n)
	}
}

// A refused dial says which address was refused, and callers can tell it
// from other dial errors with errors.Is / errors.As; with
// allow_private_targets the same dial goes through.
func TestGuardedDialerError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = guardedDialer(false, time.Second).DialContext(context.Background(), "tcp", l.Addr().String())
	var fe *ForbiddenTargetError
	if !errors.Is(err, ErrForbiddenTarget) || !errors.As(err, &fe) || fe.Addr != l.Addr().String() {
		t.Fatalf("dial to loopback: %v", err)
	}
	c, err := guardedDialer(true, time.Second).DialContext(context.Background(), "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("allowed dial: %v", err)
	}
	c.Close()
}
