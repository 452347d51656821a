package resolver

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

func TestDeadlines(t *testing.T) {
	q := plugins.LookupQuery{Addr: peer}
	t.Run("caller's deadline", func(t *testing.T) {
		fake := labZones(t, resolvertest.Secure)
		defer fake.Block()()
		r, _ := newTest(t, fake, func(c *Config) { c.Timeout = Duration(10 * time.Second) })
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		a, err := r.Lookup(ctx, q)
		elapsed := time.Since(t0)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error = %v, want context.DeadlineExceeded", err)
		}
		if errors.Is(err, ErrBogus) || a.DNSSEC == plugins.DNSSECBogus {
			t.Errorf("a timeout reported as bogus")
		}
		if elapsed > 500*time.Millisecond {
			t.Errorf("Lookup took %v past a 50ms deadline", elapsed)
		}
	})
	t.Run("default timeout without a caller deadline", func(t *testing.T) {
		fake := labZones(t, resolvertest.Secure)
		defer fake.Block()()
		r, _ := newTest(t, fake, func(c *Config) { c.Timeout = Duration(80 * time.Millisecond) })
		t0 := time.Now()
		_, err := r.Lookup(context.Background(), q)
		elapsed := time.Since(t0)
		if !errors.Is(err, context.DeadlineExceeded) || elapsed < 80*time.Millisecond || elapsed > time.Second {
			t.Fatalf("after %v: %v; want DeadlineExceeded after about 80ms", elapsed, err)
		}
		waitFor(t, "the queries to stop", func() bool { return r.Metrics().InFlight == 0 })
	})
	t.Run("a slow query does not hold a caller past its deadline", func(t *testing.T) {
		fake := labZones(t, resolvertest.Secure, peerName+" 300 IN IPSECKEY 10 1 4 192.0.2.2 "+b64(testEd25519(0)))
		release := fake.Block()
		defer release()
		r, _ := newTest(t, fake, nil)
		patient := make(chan error, 1)
		go func() {
			a, err := r.Lookup(context.Background(), q)
			if err == nil && len(a.Gateways) != 1 {
				err = errors.New("no gateway")
			}
			patient <- err
		}()
		waitFor(t, "the first caller's queries", func() bool { return r.Metrics().Misses == 3 })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		if _, err := r.Lookup(ctx, q); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("impatient caller: %v", err)
		}
		if d := time.Since(t0); d > 500*time.Millisecond {
			t.Errorf("impatient caller waited %v", d)
		}
		release()
		if err := <-patient; err != nil {
			t.Errorf("patient caller: %v", err)
		}
		if n := fake.Queries(); n != 3 {
			t.Errorf("%d queries; the impatient caller should have joined the first caller's", n)
		}
	})
	t.Run("the query stops when no caller waits", func(t *testing.T) {
		fake := labZones(t, resolvertest.Secure)
		var stopped atomic.Int32
		fake.SetHandler(func(ctx context.Context, _ *dns.Msg) (*dns.Msg, error) {
			<-ctx.Done()
			stopped.Add(1)
			return nil, ctx.Err()
		})
		r, _ := newTest(t, fake, func(c *Config) { c.Timeout = Duration(time.Minute) })
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		r.Lookup(ctx, q)
		waitFor(t, "the abandoned queries to be cancelled", func() bool { return stopped.Load() == 3 && r.Metrics().InFlight == 0 })
		if m := r.Metrics(); m.Errors != 0 {
			t.Errorf("abandoned queries counted as DNS errors: %+v", m)
		}
	})
	t.Run("max_in_flight", func(t *testing.T) {
		fake := wildcardZone(t, 0)
		release := fake.Block()
		defer release()
		r, _ := newTest(t, fake, func(c *Config) { c.MaxInFlight = 2 })
		for i := range 4 {
			go r.Lookup(context.Background(), plugins.LookupQuery{Addr: distinct(i)})
		}
		waitFor(t, "queries to start", func() bool { return fake.Queries() == 2 })
		time.Sleep(20 * time.Millisecond)
		if n := fake.Queries(); n != 2 {
			t.Errorf("%d queries outstanding, max_in_flight is 2", n)
		}
		release()
		waitFor(t, "every query", func() bool { return fake.Queries() == 12 })
	})
	t.Run("closed", func(t *testing.T) {
		fake := labZones(t, resolvertest.Secure)
		release := fake.Block()
		defer release()
		r, _ := newTest(t, fake, nil)
		done := make(chan error, 1)
		go func() { _, err := r.Lookup(context.Background(), q); done <- err }()
		waitFor(t, "the queries", func() bool { return r.Metrics().InFlight == 3 })
		r.Close()
		select {
		case err := <-done:
			if err == nil {
				t.Error("lookup in flight at Close succeeded")
			}
		case <-time.After(time.Second):
			t.Fatal("Close did not stop the lookup in flight")
		}
		if _, err := r.Lookup(context.Background(), q); !errors.Is(err, ErrClosed) {
			t.Errorf("after Close: %v, want ErrClosed", err)
		}
	})
}
