package main

// The device manager's side of the plugin API, shaped like kubelet's
// pkg/kubelet/cm/devicemanager/plugin/v1beta1 (server.go, handler.go, client.go): Register
// validates the request, dials the plugin (blocking, 10 s), asks GetDevicePluginOptions and
// only then answers; a goroutine per plugin then loops on ListAndWatch's Recv. The receive
// time is taken right after Recv returns, where kubelet hands the list to its callback.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	api "gokubelet/v1beta1"
)

const kubeletSocket = "kubelet.sock"

type kubelet struct {
	api.UnimplementedRegistrationServer
	dir     string
	mu      sync.Mutex
	server  *grpc.Server
	served  chan struct{}
	clients map[string]*client // newest client per resource (Allocate goes there)
	all     []*client
}

type client struct {
	resource string
	socket   string
	conn     *grpc.ClientConn
	api      api.DevicePluginClient
}

func newKubelet(dir string) (*kubelet, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, err
	}
	k := &kubelet{dir: abs, clients: map[string]*client{}}
	return k, k.start()
}

func (k *kubelet) socketPath() string { return filepath.Join(k.dir, kubeletSocket) }

func (k *kubelet) start() error {
	path := k.socketPath()
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	api.RegisterRegistrationServer(s, k)
	served := make(chan struct{})
	k.mu.Lock()
	k.server, k.served = s, served
	k.mu.Unlock()
	go func() {
		defer close(served)
		if err := s.Serve(ln); err != nil {
			emitError("serve %s: %v", path, err)
		}
	}()
	return nil
}

// stop drops every plugin connection and the Registration server, like a dying kubelet.
func (k *kubelet) stop() {
	k.mu.Lock()
	s, served, all := k.server, k.served, k.all
	k.server, k.all, k.clients = nil, nil, map[string]*client{}
	k.mu.Unlock()
	for _, c := range all {
		c.conn.Close()
	}
	if s != nil {
		s.Stop()
		<-served
	}
}

// restart is a kubelet restart: stop, remove every socket in the plugin dir, serve again.
func (k *kubelet) restart() error {
	k.stop()
	entries, err := os.ReadDir(k.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			os.Remove(filepath.Join(k.dir, e.Name()))
		}
	}
	return k.start()
}

// Register is kubelet's server.Register + connectClient: the answer waits for the dial.
func (k *kubelet) Register(ctx context.Context, r *api.RegisterRequest) (*api.Empty, error) {
	t := monoNS()
	if r.Version != "v1beta1" {
		return &api.Empty{}, fmt.Errorf("requested device plugin API version %q is not supported by kubelet; supported versions are [v1beta1]", r.Version)
	}
	if !isExtendedResourceName(r.ResourceName) {
		return &api.Empty{}, fmt.Errorf("the ResourceName %q is invalid", r.ResourceName)
	}
	c, err := connect(r.ResourceName, filepath.Join(k.dir, r.Endpoint), true)
	if err != nil {
		emitError("register %s: %v", r.ResourceName, err)
		return &api.Empty{}, err
	}
	k.mu.Lock()
	k.clients[r.ResourceName] = c
	k.all = append(k.all, c)
	k.mu.Unlock()
	emit(map[string]interface{}{"event": "register", "resource": r.ResourceName, "endpoint": r.Endpoint, "t_ns": t})
	go c.run()
	return &api.Empty{}, nil
}

// watch opens ListAndWatch on a socket without a registration (for the bare transport floor).
func (k *kubelet) watch(resource, socket string) {
	c, err := connect(resource, socket, false)
	if err != nil {
		emitError("watch %s: %v", resource, err)
		emit(map[string]string{"event": "end", "resource": resource, "code": "UNAVAILABLE"})
		return
	}
	k.mu.Lock()
	k.all = append(k.all, c)
	k.mu.Unlock()
	c.run()
}

// connect is kubelet's client.Connect: dial(...) then PluginConnected's GetDevicePluginOptions.
func connect(resource, socket string, options bool) (*client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, socket,
		grpc.WithAuthority("localhost"),
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("failed to dial device plugin: %v", err)
	}
	c := &client{resource: resource, socket: socket, conn: conn, api: api.NewDevicePluginClient(conn)}
	if options {
		if _, err := c.api.GetDevicePluginOptions(context.Background(), &api.Empty{}); err != nil {
			conn.Close()
			return nil, fmt.Errorf("failed to get device plugin options: %v", err)
		}
	}
	return c, nil
}

type listEvent struct {
	Event    string      `json:"event"`
	Resource string      `json:"resource"`
	TNs      int64       `json:"t_ns"`
	Devices  [][2]string `json:"devices"`
}

// run is kubelet's client.Run: Recv until the stream ends, each list stamped on arrival.
func (c *client) run() {
	stream, err := c.api.ListAndWatch(context.TODO(), &api.Empty{})
	if err == nil {
		for {
			var resp *api.ListAndWatchResponse
			resp, err = stream.Recv()
			if err != nil {
				break
			}
			t := monoNS()
			devs := make([][2]string, len(resp.Devices))
			for i, d := range resp.Devices {
				devs[i] = [2]string{d.ID, d.Health}
			}
			emit(listEvent{"list", c.resource, t, devs})
		}
	}
	code := "OK"
	if !errors.Is(err, io.EOF) {
		code = codeName(err)
	}
	emit(map[string]string{"event": "end", "resource": c.resource, "code": code})
	c.conn.Close()
}

func (k *kubelet) allocate(resource string, ids []string) {
	k.mu.Lock()
	c := k.clients[resource]
	k.mu.Unlock()
	if c == nil {
		emit(map[string]interface{}{"event": "allocate", "resource": resource, "code": "NOT_FOUND",
			"message": "no registered plugin for " + resource})
		return
	}
	req := &api.AllocateRequest{ContainerRequests: []*api.ContainerAllocateRequest{{DevicesIds: ids}}}
	t0 := monoNS()
	resp, err := c.api.Allocate(context.Background(), req)
	t1 := monoNS()
	ev := map[string]interface{}{"event": "allocate", "resource": resource, "t_ns_sent": t0, "t_ns": t1}
	if err != nil {
		ev["code"], ev["message"] = codeName(err), status.Convert(err).Message()
	} else {
		raw, _ := protojson.Marshal(resp)
		ev["response"] = jsonRaw(raw)
	}
	emit(ev)
}

type jsonRaw []byte

func (r jsonRaw) MarshalJSON() ([]byte, error) {
	if len(r) == 0 {
		return []byte("{}"), nil
	}
	return r, nil
}

// codeName spells a gRPC status code like Python's grpc.StatusCode names (UNAVAILABLE).
func codeName(err error) string {
	name := status.Code(err).String() // "Unavailable", "DeadlineExceeded", "Canceled"
	var b strings.Builder
	for i, r := range name {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	s := strings.ToUpper(b.String())
	if s == "CANCELED" {
		s = "CANCELLED"
	}
	return s
}

var (
	dnsSubdomain  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	qualifiedName = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
)

// isExtendedResourceName follows kubelet's v1helper.IsExtendedResourceName: a domain-prefixed
// name outside kubernetes.io, not starting with "requests.", a valid qualified name.
func isExtendedResourceName(name string) bool {
	prefix, short, ok := strings.Cut(name, "/")
	if !ok || strings.Contains(prefix, "kubernetes.io") || strings.HasPrefix(name, "requests.") {
		return false
	}
	return len(prefix) <= 253 && dnsSubdomain.MatchString(prefix) && len(short) <= 63 && qualifiedName.MatchString(short)
}
