package domain_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/usersync/usersync/domain"
)

func TestExpectedVersion_Matches(t *testing.T) {
	tests := []struct {
		name     string
		expected domain.ExpectedVersion
		matches  []uint64
		refuses  []uint64
	}{
		{"ZeroValue_IsAnyVersion", domain.ExpectedVersion{}, []uint64{0, 1, 7, 1 << 63}, nil},
		{"AnyVersion", domain.AnyVersion(), []uint64{0, 1, 7, 1 << 63}, nil},
		{"NoStream", domain.NoStream(), []uint64{0}, []uint64{1, 7}},
		{"ExactVersion0_IsNoStream", domain.ExactVersion(0), []uint64{0}, []uint64{1}},
		{"ExactVersion3", domain.ExactVersion(3), []uint64{3}, []uint64{0, 2, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, v := range tt.matches {
				if !tt.expected.Matches(v) {
					t.Errorf("%s refuses a stream at version %d", tt.expected, v)
				}
			}
			for _, v := range tt.refuses {
				if tt.expected.Matches(v) {
					t.Errorf("%s accepts a stream at version %d", tt.expected, v)
				}
			}
		})
	}
}

func TestExpectedVersion_Describes(t *testing.T) {
	tests := []struct {
		name        string
		expected    domain.ExpectedVersion
		wantAny     bool
		wantVersion uint64
		wantExact   bool
		wantString  string
	}{
		{"ZeroValue", domain.ExpectedVersion{}, true, 0, false, "any version"},
		{"AnyVersion", domain.AnyVersion(), true, 0, false, "any version"},
		{"NoStream", domain.NoStream(), false, 0, true, "no stream"},
		{"ExactVersion0", domain.ExactVersion(0), false, 0, true, "no stream"},
		{"ExactVersion5", domain.ExactVersion(5), false, 5, true, "version 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.expected.IsAny(); got != tt.wantAny {
				t.Errorf("IsAny() = %v, want %v", got, tt.wantAny)
			}
			v, exact := tt.expected.Version()
			if v != tt.wantVersion || exact != tt.wantExact {
				t.Errorf("Version() = %d, %v; want %d, %v", v, exact, tt.wantVersion, tt.wantExact)
			}
			if got := tt.expected.String(); got != tt.wantString {
				t.Errorf("String() = %q, want %q", got, tt.wantString)
			}
		})
	}
}

func TestExpectedVersion_ExactVersion0_EqualsNoStream(t *testing.T) {
	if domain.ExactVersion(0) != domain.NoStream() {
		t.Fatal("ExactVersion(0) and NoStream() differ")
	}
	if domain.AnyVersion() != (domain.ExpectedVersion{}) {
		t.Fatal("the zero ExpectedVersion is not AnyVersion")
	}
	if domain.ExactVersion(1) == domain.ExactVersion(2) {
		t.Fatal("different exact versions compare equal")
	}
}

func TestConcurrencyError(t *testing.T) {
	var err error = &domain.ConcurrencyError{Stream: "contact-12", Expected: domain.ExactVersion(3), Actual: 5}

	if got, want := err.Error(), "append to contact-12: expected version 3, stream is at version 5"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	noStream := &domain.ConcurrencyError{Stream: "email-ann@example.com", Expected: domain.NoStream(), Actual: 1}
	if got, want := noStream.Error(), "append to email-ann@example.com: expected no stream, stream is at version 1"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}

	wrapped := fmt.Errorf("process webhook wh-1: %w", err)
	for _, e := range []error{err, wrapped} {
		if !errors.Is(e, domain.ErrConcurrency) {
			t.Errorf("errors.Is(%q, ErrConcurrency) is false", e)
		}
		var ce *domain.ConcurrencyError
		if !errors.As(e, &ce) || ce.Stream != "contact-12" || ce.Actual != 5 {
			t.Errorf("errors.As(%q) = %+v", e, ce)
		}
	}
	if errors.Is(err, domain.ErrInvalidRequest) || errors.Is(err, errors.New("wrong expected version")) {
		t.Error("a ConcurrencyError matches errors other than ErrConcurrency")
	}
	if errors.Is(errors.New("append to contact-12: expected version 3"), domain.ErrConcurrency) {
		t.Error("an error that only reads like a conflict matches ErrConcurrency")
	}
}
