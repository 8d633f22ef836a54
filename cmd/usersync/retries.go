package main

import (
	"context"
	"fmt"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
)

// retries is the console's Retry (usershttp.Retrier): the process
// managers' Retry use cases.
type retries struct {
	returner *command.PasswordReturner // nil without --password-field
	welcomer *command.Welcomer
}

func (r retries) RetryPasswordReturn(ctx context.Context, id domain.ContactID, by domain.OperatorActed) error {
	if r.returner == nil {
		return fmt.Errorf("%w (passwords are not returned: no --password-field)", command.ErrNothingToRetry)
	}
	return r.returner.Retry(ctx, id, by)
}

func (r retries) RetryWelcomeEmail(ctx context.Context, id domain.ContactID, by domain.OperatorActed) error {
	return r.welcomer.Retry(ctx, id, by)
}
