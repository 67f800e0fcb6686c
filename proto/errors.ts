/**
 * Errors are values with a stable code, a message that says what happened, and a hint that says
 * what to do next. Both sides of the wire share this shape.
 */
export class FerryError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly hint?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'FerryError';
  }

  /** One line for a terminal: the message, then what to do. */
  describe(): string {
    return this.hint ? `${this.message}\n  -> ${this.hint}` : this.message;
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof FerryError) return err.describe();
  if (err instanceof Error) return err.message;
  return String(err);
}
