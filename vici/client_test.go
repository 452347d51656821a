package vici

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	govici "github.com/strongswan/govici/vici"
)

func quiet() Options {
	return Options{Logger: slog.New(slog.DiscardHandler)}
}

func dialFake(t *testing.T, f *fakeCharon, opts Options) *Client {
	t.Helper()
	c, err := Dial(context.Background(), f.path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ok() *govici.Message { return msg("success", "yes") }

func TestClientCommands(t *testing.T) {
	f := newFake(t)
	checkLeaks(t) // while the fake still runs: Close must end everything
	for _, cmd := range []string{"load-conn", "unload-conn", "load-shared", "unload-shared", "unload-key", "rekey"} {
		f.handle(cmd, func(*fakeConn, *govici.Message) *govici.Message { return ok() })
	}
	f.handle("load-key", func(*fakeConn, *govici.Message) *govici.Message { return msg("success", "yes", "id", "0badc0de") })
	f.handle("get-conns", func(*fakeConn, *govici.Message) *govici.Message { return msg("conns", []string{"a", "b"}) })
	f.handle("stats", func(*fakeConn, *govici.Message) *govici.Message {
		return msg("uptime", msg("running", "3 seconds", "since", "Nov 23 18:25:20 2026"), "ikesas", msg("total", "1", "half-open", "0"),
			"plugins", []string{"vici", "kernel-libipsec"})
	})
	c := dialFake(t, f, quiet())
	ctx := context.Background()

	v, err := c.Version(ctx)
	if err != nil || v.Version != "5.9.8" || v.Daemon != "charon-systemd" {
		t.Fatalf("Version: %+v, %v", v, err)
	}
	st, err := c.Stats(ctx)
	if err != nil || st.IKESAs != 1 || st.Uptime != 3*time.Second || len(st.Plugins) != 2 {
		t.Fatalf("Stats: %+v, %v", st, err)
	}
	names, err := c.ConnNames(ctx)
	if err != nil || strings.Join(names, ",") != "a,b" {
		t.Fatalf("ConnNames: %v, %v", names, err)
	}
	key := []byte{0x30, 0x2e, 0, 1, 0xff}
	id, err := c.LoadKey(ctx, Key{Type: "ed25519", Data: key})
	if err != nil || id != "0badc0de" {
		t.Fatalf("LoadKey: %q, %v", id, err)
	}
	if r := f.requests("load-key")[0]; r.Get("type") != "ed25519" || r.Get("data") != string(key) {
		t.Errorf("load-key request %s", r)
	}
	if err := c.LoadShared(ctx, Shared{ID: "obol-1", Data: []byte("s3cr\x00t"), Owners: []string{"192.0.2.11", "192.0.2.12"}}); err != nil {
		t.Fatal(err)
	}
	r := f.requests("load-shared")[0]
	if r.Get("id") != "obol-1" || r.Get("type") != "ike" || r.Get("data") != "s3cr\x00t" ||
		strings.Join(r.Get("owners").([]string), ",") != "192.0.2.11,192.0.2.12" {
		t.Errorf("load-shared request %s", r)
	}
	if err := c.LoadConn(ctx, Conn{Name: "x", Children: []Child{{Name: "net", Label: "l", LabelMode: "simple"}}}); err != nil {
		t.Fatal(err)
	}
	want, _ := marshalConn(Conn{Name: "x", Children: []Child{{Name: "net", Label: "l", LabelMode: "simple"}}})
	if got := f.requests("load-conn")[0]; got.String() != want.String() {
		t.Errorf("load-conn request\n%s\nwant\n%s", got, want)
	}
	if err := c.Rekey(ctx, SASelector{IKE: "x", ChildID: 7}, true); err != nil {
		t.Fatal(err)
	}
	if r := f.requests("rekey")[0]; r.String() != msg("ike", "x", "child-id", "7", "reauth", "yes").String() {
		t.Errorf("rekey request %s", r)
	}
	for _, step := range []func() error{
		func() error { return c.UnloadConn(ctx, "x") },
		func() error { return c.UnloadShared(ctx, "obol-1") },
		func() error { return c.UnloadKey(ctx, "0badc0de") },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Rekey(ctx, SASelector{}, false); err == nil {
		t.Error("Rekey with an empty selector: no error")
	}
}

func TestClientCommandError(t *testing.T) {
	f := newFake(t)
	checkLeaks(t) // while the fake still runs: Close must end everything
	f.handle("load-conn", func(*fakeConn, *govici.Message) *govici.Message {
		return msg("success", "no", "errmsg", "invalid value for: mode, config discarded")
	})
	c := dialFake(t, f, quiet())
	err := c.LoadConn(context.Background(), Conn{Name: "x"})
	var ce *CommandError
	if !errors.As(err, &ce) || ce.Msg != "invalid value for: mode, config discarded" || ce.Command != "load-conn" {
		t.Fatalf("error %v", err)
	}
	want := `vici: load-conn "x": charon says: invalid value for: mode, config discarded: fix the conn's settings (swanctl.conf(5) names the valid values)`
	if err.Error() != want {
		t.Errorf("error\n%s\nwant\n%s", err, want)
	}
	// A refusal is an answer: the session stays.
	if _, err := c.Version(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err = c.ListConns(context.Background(), "") // not handled by the fake
	if err == nil || !strings.Contains(err.Error(), "does not know this command") {
		t.Errorf("unknown command: %v", err)
	}
}

// TestClientReconnect restarts the fake charon under a live Client: every
// kind of call must work again without a new Dial.
func TestClientReconnect(t *testing.T) {
	f := newFake(t)
	checkLeaks(t) // while the fake still runs: Close must end everything
	for _, cmd := range []string{"load-conn", "unload-conn"} {
		f.handle(cmd, func(*fakeConn, *govici.Message) *govici.Message { return ok() })
	}
	c := dialFake(t, f, quiet())
	ctx := context.Background()
	if _, err := c.Version(ctx); err != nil {
		t.Fatal(err)
	}

	f.stop()
	_, err := c.Version(ctx)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), f.path) {
		t.Fatalf("charon down: error %v", err)
	}
	t.Log(err)
	f.start()
	if _, err := c.Version(ctx); err != nil {
		t.Fatalf("after restart: %v", err)
	}

	// Restart between calls: the dead session is noticed before sending,
	// so even a command that is not retried goes through.
	for _, call := range []struct {
		name string
		fn   func() error
	}{
		{"unload-conn", func() error { return c.UnloadConn(ctx, "x") }},
		{"load-conn", func() error { return c.LoadConn(ctx, Conn{Name: "x"}) }},
		{"version", func() error { _, err := c.Version(ctx); return err }},
	} {
		f.stop()
		f.start()
		time.Sleep(20 * time.Millisecond) // let the client's reader see the EOF
		if err := call.fn(); err != nil {
			t.Errorf("%s after restart: %v", call.name, err)
		}
	}
}

// TestClientRetryAfterSend: charon dies while answering a read; the read is
// retried once on a fresh session, a command with effects is not.
func TestClientRetryAfterSend(t *testing.T) {
	f := newFake(t)
	checkLeaks(t) // while the fake still runs: Close must end everything
	var mu sync.Mutex
	kills := 0
	die := func(c *fakeConn) bool {
		mu.Lock()
		defer mu.Unlock()
		if kills > 0 {
			kills--
			_ = c.c.Close()
			return true
		}
		return false
	}
	f.handle("get-conns", func(c *fakeConn, _ *govici.Message) *govici.Message {
		if die(c) {
			return nil
		}
		return msg("conns", []string{"a"})
	})
	f.handle("unload-conn", func(c *fakeConn, _ *govici.Message) *govici.Message {
		if die(c) {
			return nil
		}
		return ok()
	})
	c := dialFake(t, f, quiet())
	ctx := context.Background()

	mu.Lock()
	kills = 1
	mu.Unlock()
	if _, err := c.ConnNames(ctx); err != nil {
		t.Errorf("read not retried: %v", err)
	}
	mu.Lock()
	kills = 1
	mu.Unlock()
	if err := c.UnloadConn(ctx, "x"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("unload-conn after charon died mid-call: %v, want ErrUnavailable", err)
	}
	if n := len(f.requests("unload-conn")); n != 1 {
		t.Errorf("unload-conn sent %d times, want 1", n)
	}
	if err := c.UnloadConn(ctx, "x"); err != nil {
		t.Errorf("next call: %v", err)
	}
}

func TestClientDeadline(t *testing.T) {
	f := newFake(t)
	checkLeaks(t) // while the fake still runs: Close must end everything
	release := make(chan struct{})
	f.handle("stats", func(*fakeConn, *govici.Message) *govici.Message {
		<-release
		return msg()
	})
	t.Cleanup(func() { close(release) })
	c := dialFake(t, f, Options{Logger: slog.New(slog.DiscardHandler), CallTimeout: 150 * time.Millisecond})

	start := time.Now()
	_, err := c.Stats(context.Background()) // no deadline: CallTimeout applies
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer from charon") {
		t.Fatalf("error %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %s, CallTimeout is 150ms", d)
	}
	// The hung session was dropped; the next call gets a fresh one.
	if _, err := c.Version(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestListSAsMany(t *testing.T) {
	f := newFake(t)
	checkLeaks(t) // while the fake still runs: Close must end everything
	const n = 3000
	f.handle("list-sas", func(c *fakeConn, req *govici.Message) *govici.Message {
		for i := 1; i <= n; i++ {
			c.stream("list-sa", listSA("oe-"+strconv.Itoa(i), sampleIKE("uniqueid", strconv.Itoa(i)), "net-4", sampleChild()))
		}
		return msg()
	})
	c := dialFake(t, f, quiet())
	sas, err := c.ListSAs(context.Background(), SASelector{IKE: "x", IKEID: 3, Child: "net", ChildID: 4})
	if err != nil {
		t.Fatal(err)
	}
	if len(sas) != n {
		t.Fatalf("got %d SAs, want %d", len(sas), n)
	}
	for i, sa := range sas {
		if sa.UniqueID != uint32(i+1) || len(sa.Children) != 1 {
			t.Fatalf("SA %d: %+v", i, sa)
		}
	}
	if r := f.requests("list-sas")[0]; r.String() != msg("ike", "x", "ike-id", "3", "child", "net", "child-id", "4").String() {
		t.Errorf("list-sas request %s", r)
	}
}

func TestInitiate(t *testing.T) {
	f := newFake(t)
	checkLeaks(t) // while the fake still runs: Close must end everything
	var timeouts []int
	var mu sync.Mutex
	f.handle("initiate", func(c *fakeConn, req *govici.Message) *govici.Message {
		ms, _ := strconv.Atoi(req.Get("timeout").(string))
		mu.Lock()
		timeouts = append(timeouts, ms)
		mu.Unlock()
		logs := []struct{ group, text string }{
			{"CFG", "vici initiate CHILD_SA 'net'"},
			{"IKE", "initiating IKE_SA gw-gw[1] to 192.0.2.12"},
			{"ENC", "generating IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) N(NATD_D_IP) ]"},
			{"NET", "sending packet: from 192.0.2.11[500] to 192.0.2.12[500] (240 bytes)"},
			{"IKE", "received AUTHENTICATION_FAILED notify error"},
			{"CHD", "establishing CHILD_SA net{1} failed"},
		}
		for _, l := range logs {
			c.stream("control-log", msg("group", l.group, "level", "1", "ikesa-name", "gw-gw", "ikesa-uniqueid", "1", "msg", l.text))
		}
		if req.Get("child") == "good" {
			return ok()
		}
		return msg("success", "no", "errmsg", "establishing CHILD_SA 'net' failed")
	})
	c := dialFake(t, f, quiet())

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.Initiate(ctx, "gw-gw", "good"); err != nil {
		t.Fatal(err)
	}
	err := c.Initiate(ctx, "gw-gw", "net")
	var ce *CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v", err)
	}
	want := `vici: initiate child "net" of conn "gw-gw": charon says: establishing CHILD_SA 'net' failed (charon log: ` +
		`vici initiate CHILD_SA 'net'; initiating IKE_SA gw-gw[1] to 192.0.2.12; received AUTHENTICATION_FAILED notify error; ` +
		`establishing CHILD_SA net{1} failed): check both peers' conns, credentials and reachability; charon's log has the details`
	if err.Error() != want {
		t.Errorf("error\n%s\nwant\n%s", err, want)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, ms := range timeouts {
		// charon gets a little less than what is left, to answer in time.
		if ms < 2000 || ms > 2900 {
			t.Errorf("timeout %d ms for a ctx with 3 s left", ms)
		}
	}
	if err := c.Initiate(ctx, "", ""); err == nil {
		t.Error("Initiate without names: no error")
	}
}

func TestTerminate(t *testing.T) {
	f := newFake(t)
	checkLeaks(t) // while the fake still runs: Close must end everything
	f.handle("terminate", func(c *fakeConn, req *govici.Message) *govici.Message {
		if req.Get("ike-id") == "9" {
			return msg("success", "no", "matches", "0", "terminated", "0", "errmsg", "no matching SAs to terminate found")
		}
		return msg("success", "yes", "matches", "1", "terminated", "1")
	})
	c := dialFake(t, f, quiet())
	ctx := context.Background()
	if err := c.TerminateForce(ctx, SASelector{IKE: "gw-gw"}); err != nil {
		t.Fatal(err)
	}
	r := f.requests("terminate")[0]
	if r.Get("ike") != "gw-gw" || r.Get("force") != "yes" || r.Get("timeout") == nil {
		t.Errorf("terminate request %s", r)
	}
	err := c.Terminate(ctx, SASelector{IKEID: 9})
	if err == nil || !strings.Contains(err.Error(), "vici: terminate ike-id 9: charon says: no matching SAs to terminate found") {
		t.Errorf("error %v", err)
	}
	if err := c.Terminate(ctx, SASelector{}); err == nil {
		t.Error("empty selector: no error")
	}
}

// TestClientConcurrent hammers one Client from many goroutines (run with -race).
func TestClientConcurrent(t *testing.T) {
	f := newFake(t)
	checkLeaks(t) // while the fake still runs: Close must end everything
	f.handle("list-sas", func(c *fakeConn, _ *govici.Message) *govici.Message {
		for i := 0; i < 50; i++ {
			c.stream("list-sa", listSA("a", sampleIKE(), "net-4", sampleChild()))
		}
		return msg()
	})
	f.handle("initiate", func(*fakeConn, *govici.Message) *govici.Message { return ok() })
	c := dialFake(t, f, quiet())
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				var err error
				switch j % 3 {
				case 0:
					_, err = c.Version(context.Background())
				case 1:
					var sas []IKESA
					sas, err = c.ListSAs(context.Background(), SASelector{})
					if err == nil && len(sas) != 50 {
						err = fmt.Errorf("%d SAs", len(sas))
					}
				case 2:
					err = c.Initiate(context.Background(), "a", "net")
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestClientClose(t *testing.T) {
	f := newFake(t)
	checkLeaks(t) // while the fake still runs: Close must end everything
	c := dialFake(t, f, quiet())
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Version(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
	if err := c.Initiate(context.Background(), "a", ""); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

func TestDialNoCharon(t *testing.T) {
	checkLeaks(t)
	path := t.TempDir() + "/none.vici"
	_, err := Dial(context.Background(), path, quiet())
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("error %v", err)
	}
	want := "vici: dial: charon is not answering: is charon running, with the vici plugin listening on " + path + "?"
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error\n%s\nwant prefix\n%s", err, want)
	}
}

// TestNewClientLazy: a client made before charon runs dials on first use.
func TestNewClientLazy(t *testing.T) {
	f := newFake(t)
	checkLeaks(t)
	f.stop()
	c := NewClient(f.path, quiet())
	defer c.Close()
	if _, err := c.Version(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("before charon: %v", err)
	}
	f.start()
	if _, err := c.Version(context.Background()); err != nil {
		t.Fatalf("after charon started: %v", err)
	}
}

// TestClientRestartStorm: calls from many goroutines while charon restarts
// again and again fail only with ErrUnavailable, never hang, and work
// again at the end.
func TestClientRestartStorm(t *testing.T) {
	f := newFake(t)
	f.handle("list-sas", func(c *fakeConn, _ *govici.Message) *govici.Message {
		for i := 0; i < 20; i++ {
			c.stream("list-sa", listSA("a", sampleIKE(), "net-4", sampleChild()))
		}
		return msg()
	})
	checkLeaks(t)
	c := dialFake(t, f, Options{Logger: slog.New(slog.DiscardHandler), CallTimeout: 2 * time.Second})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if i%2 == 0 {
					_, err = c.Version(context.Background())
				} else {
					_, err = c.ListSAs(context.Background(), SASelector{})
				}
				if err != nil && !errors.Is(err, ErrUnavailable) {
					errs <- err
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		time.Sleep(10 * time.Millisecond)
		f.stop()
		time.Sleep(5 * time.Millisecond)
		f.start()
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if sas, err := c.ListSAs(context.Background(), SASelector{}); err != nil || len(sas) != 20 {
		t.Fatalf("after the storm: %d SAs, %v", len(sas), err)
	}
}
