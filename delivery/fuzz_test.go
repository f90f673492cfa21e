package delivery

import (
	"encoding/json"
	"testing"
)

// FuzzParsePublish: no panic; what is accepted is a usable message and
// what is refused is a PublishError.
func FuzzParsePublish(f *testing.F) {
	for _, s := range []string{
		`{"event":"order.status","tenant":"t","location":"l","id":"o-1","data":{"orderId":"X"}}`,
		`{"event":"e","data":[1,2,{"a":null}]}`,
		`{"event":"e","data":"text"}`,
		`{"event":"a|b","data":{}}`,
		`{"event":"e","data":{}} trailing`,
		`{"event":"e","evnt":1,"data":{}}`,
		`[]`, ``, `{`, `{"event":"\u0000","data":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := ParsePublish(body)
		if err != nil {
			if _, ok := err.(*PublishError); !ok {
				t.Fatalf("%T: %v", err, err)
			}
			return
		}
		if m.Event == "" || !json.Valid(m.Data) || (m.Data[0] != '{' && m.Data[0] != '[') {
			t.Fatalf("accepted %+v", m)
		}
		for _, v := range []string{m.Event, m.Tenant, m.Location, m.ID} {
			if validateName("x", v) != nil && v != "" {
				t.Fatalf("accepted name %q", v)
			}
		}
	})
}
