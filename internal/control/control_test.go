package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func startServer(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := Listen(path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(map[string]Handler{
		"echo": func(ctx context.Context, p json.RawMessage) (any, error) {
			var v map[string]string
			if err := json.Unmarshal(p, &v); err != nil {
				return nil, &Error{CodeBadRequest, "echo wants an object"}
			}
			return v, nil
		},
		"fail": func(ctx context.Context, p json.RawMessage) (any, error) {
			return nil, errors.New("it broke; try again")
		},
	}, -1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

func TestRoundTrip(t *testing.T) {
	path := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out map[string]string
	if err := c.Call(ctx, "echo", map[string]string{"a": "b"}, &out); err != nil || out["a"] != "b" {
		t.Fatalf("echo = %v, %v", out, err)
	}
	err = c.Call(ctx, "fail", nil, nil)
	var ce *Error
	if !errors.As(err, &ce) || ce.Code != CodeFailed || !strings.Contains(ce.Message, "it broke") {
		t.Fatalf("fail = %#v", err)
	}
	err = c.Call(ctx, "nope", nil, nil)
	if !errors.As(err, &ce) || ce.Code != CodeUnknownMethod || !strings.Contains(ce.Message, `"echo"`) && !strings.Contains(ce.Message, "echo") {
		t.Fatalf("unknown method = %#v", err)
	}
	// The connection survives errors: one more good call.
	if err := c.Call(ctx, "echo", map[string]string{"x": "y"}, &out); err != nil || out["x"] != "y" {
		t.Fatalf("echo after errors = %v, %v", out, err)
	}
}

func TestBadLines(t *testing.T) {
	path := startServer(t)
	tests := []struct {
		name, line, code string
	}{
		{"garbage", "not json", CodeBadRequest},
		{"old version", `{"v":0,"method":"echo"}`, CodeVersion},
		{"no method", `{"v":1}`, CodeBadRequest},
		{"too long", strings.Repeat("x", MaxLine+10), CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			go func() { _, _ = c.Write([]byte(tt.line + "\n")) }()
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadBytes('\n')
			if err != nil {
				t.Fatal(err)
			}
			var r Response
			if err := json.Unmarshal(line, &r); err != nil || r.Error == nil || r.Error.Code != tt.code {
				t.Fatalf("response %s, want code %s", line, tt.code)
			}
		})
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := startServer(t)
	if _, err := Listen(path, 0o600, -1); err == nil || !strings.Contains(err.Error(), "another obold") {
		t.Fatalf("second Listen = %v", err)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"v":1,"method":"status"}`))
	f.Add([]byte(`{"v":1,"method":"sas","params":{"json":true}}`))
	f.Add([]byte(`{"v":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRequest(b)
		if err == nil && (r.V != Version || r.Method == "") {
			t.Fatalf("accepted %q as %+v", b, r)
		}
		if err != nil && err.Message == "" {
			t.Fatal("error without message")
		}
	})
}
